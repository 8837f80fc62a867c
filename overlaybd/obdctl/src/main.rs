//! `obdctl`: inspect and build overlaybd image files from a shell.

mod args;
mod layer_cmd;
mod output;
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
    /// Pull an image into containerd with its overlaybd layers left remote (lazy). Runs
    /// `overlaybd-snapshotter rpull` (beside obdctl, else on PATH) with these arguments; see
    /// `obdctl rpull --help`.
    #[command(disable_help_flag = true)]
    Rpull {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
}

/// `rpull` belongs to the snapshotter (it speaks containerd's API); obdctl hands over to it.
fn rpull(args: &[std::ffi::OsString]) -> anyhow::Result<std::process::ExitCode> {
    use std::os::unix::process::CommandExt;
    let beside = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("overlaybd-snapshotter")))
        .filter(|p| p.is_file());
    let exe = beside.unwrap_or_else(|| "overlaybd-snapshotter".into());
    let err = std::process::Command::new(&exe)
        // Usage lines then name what the user typed.
        .arg0("obdctl")
        .arg("rpull")
        .args(args)
        .exec();
    anyhow::bail!("run {} rpull: {err}", exe.display())
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Zfile(cmd) => zfile_cmd::run(cmd),
        Command::Layer(cmd) => layer_cmd::run(cmd),
        Command::Rpull { args } => rpull(&args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("obdctl: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
