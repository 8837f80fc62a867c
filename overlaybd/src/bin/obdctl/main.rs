//! `obdctl`: inspect and build overlaybd image files from a shell.

mod args;
mod layer_cmd;
mod zfile_cmd;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "obdctl",
    version,
    about = "Inspect and build overlaybd image files"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// ZFile: compress, decompress, verify, inspect.
    #[command(subcommand)]
    Zfile(zfile_cmd::ZfileCmd),
    /// LSMT layers: create, commit, seal, inspect, flatten a stack.
    #[command(subcommand)]
    Layer(layer_cmd::LayerCmd),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Zfile(cmd) => zfile_cmd::run(cmd),
        Command::Layer(cmd) => layer_cmd::run(cmd),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("obdctl: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
