//! The README's demo (`scripts/demo.sh`): a lazy pull through containerd, end to end.

use std::time::Instant;

use e2e_tests::image::{push_sample, GREETING};
use e2e_tests::{require, Env, Options};

fn mb(b: u64) -> f64 {
    b as f64 / 1e6
}

fn main() {
    if !require() {
        std::process::exit(1);
    }
    let big_mib = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(256);
    let t = Instant::now();
    e2e_tests::bin("obdctl");
    println!("== binaries built ({:.1} s)", t.elapsed().as_secs_f64());
    let t = Instant::now();
    let env = Env::start(Options::default());
    println!(
        "== registry {}, containerd, overlaybd-daemon and overlaybd-snapshotter started in {} ({:.1} s)",
        env.registry_addr,
        env.dir.path().display(),
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let layers = push_sample(&env.registry_addr, "demo", "v1", big_mib);
    println!(
        "== sample image demo:v1 pushed: busybox + a {big_mib} MiB data file, {:.1} MB of gzip layers ({:.1} s)",
        mb(layers),
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    env.convert("demo:v1", "demo:v1-obd");
    println!(
        "== overlaybd-convertor convert demo:v1 → demo:v1-obd ({:.1} s)",
        t.elapsed().as_secs_f64()
    );
    let image = format!("{}/demo:v1-obd", env.host());
    let before = env.relay.served();
    let t = Instant::now();
    println!("== obdctl rpull {image}");
    print!("{}", env.rpull(&image));
    println!("== ctr run --rm --snapshotter overlaybd {image} demo");
    let out = env.ctr(
        "default",
        &["run", "--rm", "--snapshotter", "overlaybd", &image, "demo"],
    );
    print!("{out}");
    let took = t.elapsed();
    let served = env.relay.served() - before;
    assert_eq!(out.trim(), GREETING, "unexpected output");
    println!(
        "== pull + start in {:.2} s; the registry served {:.2} MB of the image's {:.1} MB ({:.1} %)",
        took.as_secs_f64(),
        mb(served),
        mb(layers),
        served as f64 * 100.0 / layers as f64
    );
    drop(env);
    println!("== stopped everything and removed the temporary directory");
}
