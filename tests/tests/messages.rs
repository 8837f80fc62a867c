//! What a new user reads when a command is given something wrong: one line naming the cause
//! and what to do, no backtrace, no colour codes, and the program name they typed.

use std::process::Command;

use e2e_tests::bin;

fn run(exe: &str, args: &[&str]) -> (bool, String) {
    let o = Command::new(bin(exe))
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
    s.push_str(&String::from_utf8_lossy(&o.stderr));
    (o.status.success(), s)
}

#[test]
fn a_missing_config_file_given_with_config_is_an_error() {
    for exe in ["overlaybd-daemon", "overlaybd-snapshotter", "overlaybd-p2p"] {
        let (ok, out) = run(exe, &["--config", "/nonexistent/config.toml"]);
        assert!(!ok, "{exe} ran without its config: {out}");
        assert!(
            out.contains("--config /nonexistent/config.toml: no such file"),
            "{exe}: {out}"
        );
    }
}

#[test]
fn errors_are_one_line_without_backtraces_or_colours() {
    let (ok, out) = run(
        "overlaybd-daemon",
        &["ctl", "--socket", "/nonexistent/api.sock", "list"],
    );
    assert!(!ok);
    assert!(
        !out.contains("backtrace") && !out.contains("Stack"),
        "{out}"
    );
    assert!(!out.contains('\x1b'), "colour codes: {out}");
    assert_eq!(out.trim().lines().count(), 1, "{out}");
    assert!(
        out.starts_with("overlaybd-daemon: connect /nonexistent/api.sock"),
        "{out}"
    );
    assert_eq!(
        out.matches("No such file or directory").count(),
        1,
        "once: {out}"
    );
}

#[test]
fn obdctl_rpull_usage_names_obdctl() {
    // obdctl hands rpull over to overlaybd-snapshotter; the usage still says what was typed.
    bin("overlaybd-snapshotter");
    let (ok, out) = run("obdctl", &["rpull"]);
    assert!(!ok);
    assert!(out.contains("Usage: obdctl rpull"), "{out}");
    assert!(!out.contains("Usage: overlaybd-snapshotter"), "{out}");
}
