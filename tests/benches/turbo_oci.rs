//! TurboOCI against native overlaybd and OCI, on the same image (busybox + DATA_MIB MiB of
//! data, gzip layers):
//! - build: `overlaybd-convertor convert` (native) and `convert --turbo-oci`, wall time of the
//!   release binaries, interleaved; the meta image's size as a share of the source's layers;
//! - cold start (pull command to the container's output, a start that reads one small file; and
//!   Debian minbase's `cat /etc/debian_version`) at 100 MB/s and 25 MB/s through the rate-limited relay: OCI + overlayfs (`ctr images pull`),
//!   native overlaybd (`obdctl rpull`, lazy), TurboOCI (`obdctl rpull` of the meta image,
//!   lazy; containerd 1.6's `ctr images pull` passes no layer labels); a fresh host and dropped page cache each time; bytes the registry served;
//! - warm sequential read: `DATA_MIB` MiB read a second time with the page cache dropped (the
//!   daemon's caches full): native (blob cache, ZFile decode) against TurboOCI (inflated-span
//!   cache).
//!
//! `cargo bench -p e2e-tests --bench turbo_oci [-- DATA_MIB]` (root; default 256). Medians of
//! 3 interleaved rounds.

use std::time::Instant;

use e2e_tests::bench::{drop_caches, median};
use e2e_tests::image::GREETING;
use e2e_tests::{require, Env, Options};

const ROUNDS: usize = 3;

fn timed(f: impl FnOnce()) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_secs_f64()
}

/// Bytes of an image's layers, from its manifest in the registry.
fn layer_bytes(registry: &str, repo: &str, tag: &str) -> u64 {
    let url = format!("http://{registry}/v2/{repo}/manifests/{tag}");
    let m: serde_json::Value = reqwest::blocking::Client::new()
        .get(url)
        .header(
            "Accept",
            "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json",
        )
        .send()
        .unwrap()
        .json()
        .unwrap();
    m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["size"].as_u64().unwrap())
        .sum()
}

fn main() {
    if std::env::args().any(|a| a == "--list") || !require() {
        return;
    }
    let mib = e2e_tests::bench::number_arg(256);
    let mut e = Env::start(Options::default());
    let source = e2e_tests::image::push_sample(&e.registry_addr, "app", "v1", mib);
    println!("turbo_oci: image = busybox + {mib} MiB data ({:.1} MB of gzip layers); medians of {ROUNDS} rounds", source as f64 / 1e6);

    // Build time, interleaved: the sample, an image of real files (busybox and this machine's
    // /usr/share in three layers, as `convert_bench` makes it), and Debian minbase in three
    // layers (`image::debian_layers`).
    let share: Vec<Vec<u8>> = [
        &["usr/share/doc", "usr/share/locale", "usr/share/man"][..],
        &[
            "usr/share/perl",
            "usr/share/perl5",
            "usr/share/zoneinfo",
            "usr/share/i18n",
        ][..],
        &[
            "usr/share/common-licenses",
            "usr/share/mime",
            "usr/share/misc",
            "usr/share/info",
        ][..],
    ]
    .iter()
    .map(|dirs| test_support::layer::host_layer(dirs))
    .collect();
    let mut layers = vec![e2e_tests::image::busybox_layer()];
    layers.extend(share);
    let files = e2e_tests::image::push(&e.registry_addr, "files", "v1", &layers, &["/bin/true"]);
    drop(layers);
    let mut images = vec![("app", source), ("files", files)];
    let minbase = e2e_tests::image::debian_minbase_tar();
    let debian = minbase.is_some();
    if let Some(minbase) = minbase {
        let layers = e2e_tests::image::debian_layers(&minbase);
        let bytes =
            e2e_tests::image::push(&e.registry_addr, "debian", "v1", &layers, &["/bin/true"]);
        images.push(("debian", bytes));
    }
    for (repo, bytes) in images {
        let (mut native, mut turbo) = (Vec::new(), Vec::new());
        for r in 0..ROUNDS {
            native.push(timed(|| {
                e.convert(&format!("{repo}:v1"), &format!("{repo}:obd{r}"))
            }));
            turbo.push(timed(|| {
                e.convert_with(
                    &["--turbo-oci"],
                    &format!("{repo}:v1"),
                    &format!("{repo}:turbo{r}"),
                );
            }));
        }
        let meta = layer_bytes(&e.registry_addr, repo, "turbo0");
        let obd = layer_bytes(&e.registry_addr, repo, "obd0");
        let (n, t) = (median(native), median(turbo));
        println!(
            "build {repo} ({:.1} MB of gzip layers): native {n:.2} s, TurboOCI {t:.2} s = {:.2}x \
             faster; meta image {:.2} MB = {:.2} % of the source's layers (native image {:.1} MB \
             = {:.0} %)",
            bytes as f64 / 1e6,
            n / t,
            meta as f64 / 1e6,
            meta as f64 * 100.0 / bytes as f64,
            obd as f64 / 1e6,
            obd as f64 * 100.0 / bytes as f64
        );
    }

    let run = |e: &Env, snapshotter: &str, image: &str, id: &str, cmd: &[&str]| {
        let mut args = vec!["run", "--rm", "--snapshotter", snapshotter, image, id];
        args.extend_from_slice(cmd);
        e.ctr("default", &args)
    };
    let pull = |e: &Env, snapshotter: &str, image: &str| {
        e.ctr_pull("default", snapshotter, &[], image);
    };
    // Cold starts of the sample (its start reads one small file) and of Debian minbase (`cat
    // /etc/debian_version`): the random data's gzip index is the worst case for TurboOCI's meta
    // blobs (a window per MiB that does not compress); real files compress.
    let mut starts: Vec<(&str, &[&str], &str)> = vec![("app", &[], GREETING)];
    if debian {
        starts.push(("debian", &["cat", "/etc/debian_version"], "12."));
    }
    for (repo, cmd, expect) in starts {
        let oci = format!("{}/{repo}:v1", e.host());
        let native_img = format!("{}/{repo}:obd0", e.host());
        let turbo_img = format!("{}/{repo}:turbo0", e.host());
        for rate_mb in [100u64, 25] {
            e.relay.set_rate(rate_mb * 1_000_000);
            let mut cold: std::collections::BTreeMap<&str, (Vec<f64>, u64)> = Default::default();
            for round in 0..ROUNDS {
                for kind in ["OCI", "native", "TurboOCI"] {
                    e.reset_host();
                    drop_caches();
                    let before = e.relay.served();
                    let id = format!("c{round}");
                    let secs = timed(|| {
                        let out = match kind {
                            "OCI" => {
                                pull(&e, "overlayfs", &oci);
                                run(&e, "overlayfs", &oci, &id, cmd)
                            }
                            "native" => {
                                e.rpull(&native_img);
                                run(&e, "overlaybd", &native_img, &id, cmd)
                            }
                            _ => {
                                e.rpull(&turbo_img);
                                run(&e, "overlaybd", &turbo_img, &id, cmd)
                            }
                        };
                        assert!(out.trim().starts_with(expect), "{kind} {repo}: {out}");
                    });
                    let m = cold.entry(kind).or_default();
                    m.0.push(secs);
                    m.1 = e.relay.served() - before;
                }
            }
            let get = |k: &str| (median(cold[k].0.clone()), cold[k].1 as f64 / 1e6);
            let ((o, ob), (nv, nb), (tb, tbb)) = (get("OCI"), get("native"), get("TurboOCI"));
            println!(
                "{repo} {rate_mb:>4} MB/s cold start: OCI {o:.2} s ({ob:.1} MB) | native {nv:.2} s \
                 ({nb:.1} MB) | TurboOCI {tb:.2} s ({tbb:.1} MB) = {:.2}x native, {:.2}x OCI",
                tb / nv,
                tb / o
            );
        }
    }

    let native_img = format!("{}/app:obd0", e.host());
    let turbo_img = format!("{}/app:turbo0", e.host());
    // Warm sequential read of the whole data file, page cache dropped, daemon caches full.
    e.relay.set_rate(0);
    let read = ["sh", "-c", "cat /data/big.bin > /dev/null"];
    let mut warm: std::collections::BTreeMap<&str, Vec<f64>> = Default::default();
    for round in 0..ROUNDS {
        for (kind, image) in [("native", &native_img), ("TurboOCI", &turbo_img)] {
            e.reset_host();
            e.rpull(image);
            run(&e, "overlaybd", image, &format!("f{round}"), &read);
            drop_caches();
            let secs = timed(|| {
                run(&e, "overlaybd", image, &format!("w{round}"), &read);
            });
            warm.entry(kind).or_default().push(secs);
        }
    }
    let (nw, tw) = (
        median(warm["native"].clone()),
        median(warm["TurboOCI"].clone()),
    );
    println!(
        "warm sequential read of {mib} MiB (page cache dropped): native {nw:.2} s ({:.0} MB/s), \
         TurboOCI {tw:.2} s ({:.0} MB/s) = {:.2}x native's throughput",
        (mib << 20) as f64 / 1e6 / nw,
        (mib << 20) as f64 / 1e6 / tw,
        nw / tw
    );
}
