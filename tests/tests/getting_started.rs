//! `docs/getting-started.md`, followed from a clean state by `scripts/getting-started-test.sh`
//! (every `sh` block, in private mount and PID namespaces; a real Debian image built with
//! mmdebstrap as the source): install, configure, start, convert, a lazy pull, a container's
//! output, the metrics.

use std::process::Command;

use e2e_tests::{require, require_tools, serial};

#[test]
fn the_getting_started_guide_runs_from_a_clean_state() {
    let _s = serial();
    if !require() || !require_tools(&["unshare"]) {
        return;
    }
    // The binaries the guide's install step copies (the dev profile of this checkout).
    e2e_tests::bin("obdctl");
    let work = tempfile::Builder::new()
        .prefix("obd-guide-")
        .tempdir()
        .unwrap();
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/getting-started-test.sh");
    let o = Command::new(&script)
        .env("OBD_GUIDE_WORK", work.path())
        .output()
        .unwrap();
    let out = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "the guide failed:\n{out}");
    assert!(out.contains("== the guide ran from a clean state"), "{out}");
}
