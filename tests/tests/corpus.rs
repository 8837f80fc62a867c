//! The corpus of real application images (`e2e_tests::corpus`): each is built from Debian
//! packages, pushed, converted, verified against its source, pulled lazily through CRI and run
//! by containerd until its readiness probe answers; the registry serves a fraction of it.

use std::time::{Duration, Instant};

use e2e_tests::corpus;
use e2e_tests::{bin, cri, start_on, Containerd, Options};

#[test]
fn corpus_images_convert_verify_and_start_lazily_to_ready() {
    let Some((_s, env)) = start_on(Containerd::V1, Options::default()) else {
        return;
    };
    for app in corpus::ci_subset() {
        let t = Instant::now();
        let Some(bytes) = corpus::push(&env.registry_addr, app, "v1") else {
            return;
        };
        eprintln!(
            "{}: built and pushed in {:.1} s",
            app.name,
            t.elapsed().as_secs_f64()
        );
        let (src, dst) = (format!("{}:v1", app.name), format!("{}:obd", app.name));
        env.convert(&src, &dst);
        let o = std::process::Command::new(bin("overlaybd-convertor"))
            .args(["verify", "--plain-http"])
            .arg(format!("{}/{src}", env.registry_addr))
            .arg(format!("{}/{dst}", env.registry_addr))
            .output()
            .unwrap();
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success() && out.contains(" 0 differences"),
            "{}: verify: {out}{}",
            app.name,
            String::from_utf8_lossy(&o.stderr)
        );
        let image = format!("{}/{dst}", env.host());
        let before = env.relay.served();
        let t = Instant::now();
        cri::pull_image(&env.containerd_socket(), &image)
            .unwrap_or_else(|e| panic!("{e}\n{}", env.logs()));
        let id = format!("{}-1", app.name);
        corpus::start(
            &env,
            "k8s.io",
            app,
            "overlaybd",
            &image,
            &id,
            Duration::from_secs(60),
        )
        .unwrap_or_else(|e| panic!("{e}\n{}", env.logs()));
        let secs = t.elapsed().as_secs_f64();
        let served = env.relay.served() - before;
        eprintln!(
            "{}: pull to ready {secs:.2} s; the registry served {served} B of the image's \
             {bytes} B of gzip layers ({:.1} %)",
            app.name,
            served as f64 * 100.0 / bytes as f64
        );
        env.remove_containers("k8s.io");
        // The converted image's layers are larger than the gzip'ed source's: a lazy start
        // reads well under half of them.
        assert!(
            served * 2 < bytes,
            "{}: served {served} of {bytes}\n{}",
            app.name,
            env.logs()
        );
    }
}
