//! Docker Engine with its containerd image store and `storage-driver = "overlaybd"`: moby's
//! pull adds the same layer annotations as CRI (`AppendInfoHandlerWrapper`, for any
//! snapshotter), so `docker pull` of an overlaybd image is lazy and `docker run` reads on
//! demand; a plain image goes through the same snapshotter by download.

use e2e_tests::docker::{self, Docker};
use e2e_tests::image::{push_sample, GREETING};
use e2e_tests::{start_on, Containerd, Options};

#[test]
fn docker_pulls_an_overlaybd_image_lazily_and_runs_it_and_plain_images() {
    if !docker::available() {
        return;
    }
    let Some((_s, env)) = start_on(Containerd::V2, Options::default()) else {
        return;
    };
    let (image, source_bytes) = env.converted_sample("sample", 64);
    let docker = Docker::start(&env);

    let before = env.relay.served();
    docker.ok(&env, &["pull", "-q", &image]);
    let pulled = env.relay.served() - before;
    assert!(
        pulled < 256 << 10,
        "docker pull fetched {pulled} bytes: not lazy\n{}",
        env.logs()
    );
    let out = docker.ok(&env, &["run", "--rm", "--network", "none", &image]);
    assert_eq!(out.trim(), GREETING);
    let served = env.relay.served() - before;
    eprintln!(
        "docker pull + run: the registry served {served} of {source_bytes} B ({:.1}%)",
        served as f64 * 100.0 / source_bytes as f64
    );
    assert!(
        served * 10 < source_bytes,
        "served {served}\n{}",
        env.logs()
    );
    let slog = env.snapshotter.as_ref().unwrap().log();
    assert!(slog.contains("remote-snapshot-prepared=true"), "{slog}");

    // A container that writes, and a plain image, through the same snapshotter.
    let out = docker.ok(
        &env,
        &[
            "run",
            "--rm",
            "--network",
            "none",
            &image,
            "sh",
            "-c",
            "echo w > /tmp/x && cat /tmp/x /data/small.txt",
        ],
    );
    assert_eq!(out, format!("w\n{GREETING}\n"));
    push_sample(&env.registry_addr, "plain", "v1", 1);
    let plain = format!("{}/plain:v1", env.host());
    docker.ok(&env, &["pull", "-q", &plain]);
    let out = docker.ok(&env, &["run", "--rm", "--network", "none", &plain]);
    assert_eq!(out.trim(), GREETING);
    let warnings = env.snapshotter_warnings();
    assert!(warnings.is_empty(), "{warnings:#?}");
}
