//! Real applications (the corpus, `e2e_tests::corpus`): time from the pull command to ready
//! (the app's HTTP answer, or its printed line), at 100 MB/s and 25 MB/s through the relay,
//! for the OCI image with containerd's overlayfs snapshotter (`ctr images pull`), the converted
//! image read lazily (`obdctl rpull`), the converted image with its recorded trace (record-trace
//! of the start), and the TurboOCI meta image; a fresh host and dropped page cache each time;
//! bytes the registry served. Then warm: the lazy image started again with its caches full
//! and the page cache dropped, alone and after a pull (as the cold times include one).
//! Medians of ROUNDS interleaved rounds.
//!
//! `cargo bench -p e2e-tests --bench corpus_start [-- ROUNDS]` (root; `OBD_CORPUS` picks the
//! images as for the tests: default `flask,nginx`, `all` for the five; default 3 rounds).
//! Writes bar charts of the times and bytes per rate to `docs/charts/corpus-*.svg`.
//! For a quick look, `OBD_MODES=lazy,trace` runs some modes only (no charts then; only the
//! images those modes need are made) and `OBD_RATES=100` some rates (MB/s; 0 is no limit);
//! `OBD_WARM=0` skips the warm part. `OBD_CONVERT_ARGS` (e.g. `--algorithm zstd --block-size
//! 16384`) are given to the conversion of the lazy (and traced) image; its size against the
//! source's gzip layers is printed.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use e2e_tests::bench::{drop_caches, median};
use e2e_tests::corpus::{self, App};
use e2e_tests::{free_port, require, Env, Options};

const MODES: [&str; 4] = ["OCI", "lazy", "trace", "TurboOCI"];

const COLORS: [&str; 4] = ["#9e9e9e", "#1f77b4", "#2ca02c", "#ff7f0e"];

/// A grouped bar chart: per image, one bar per mode; `value` and its label per bar.
fn bars(title: &str, unit: &str, groups: &[(&str, Vec<f64>)]) -> String {
    let (w, h, left, top, bottom) = (720.0, 300.0, 60.0, 40.0, 50.0);
    let max = groups
        .iter()
        .flat_map(|(_, v)| v.iter().copied())
        .fold(0.0f64, f64::max)
        .max(1e-9);
    let plot_h = h - top - bottom;
    let group_w = (w - left - 20.0) / groups.len().max(1) as f64;
    let bar_w = group_w * 0.8 / MODES.len() as f64;
    let mut out = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" \
         font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" \
         fill=\"white\"/>\n<text x=\"{left}\" y=\"20\" font-size=\"14\">{title}</text>\n"
    );
    out += &format!(
        "<line x1=\"{left}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n",
        h - bottom,
        w - 20.0,
        h - bottom
    );
    for (g, (name, values)) in groups.iter().enumerate() {
        let x0 = left + g as f64 * group_w + group_w * 0.1;
        for (m, v) in values.iter().enumerate() {
            let bh = v / max * plot_h;
            let x = x0 + m as f64 * bar_w;
            let y = h - bottom - bh;
            out += &format!(
                "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{bh:.1}\" \
                 fill=\"{}\"/>\n<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" \
                 font-size=\"9\">{v:.2}</text>\n",
                bar_w * 0.9,
                COLORS[m],
                x + bar_w * 0.45,
                y - 3.0
            );
        }
        out += &format!(
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{name}</text>\n",
            x0 + group_w * 0.4,
            h - bottom + 15.0
        );
    }
    for (m, mode) in MODES.iter().enumerate() {
        let x = left + m as f64 * 110.0;
        out += &format!(
            "<rect x=\"{x}\" y=\"{}\" width=\"10\" height=\"10\" fill=\"{}\"/>\n\
             <text x=\"{}\" y=\"{}\">{mode}</text>\n",
            h - 22.0,
            COLORS[m],
            x + 14.0,
            h - 13.0
        );
    }
    out += &format!(
        "<text x=\"12\" y=\"{}\" transform=\"rotate(-90 12 {})\">{unit}</text>\n</svg>\n",
        top + plot_h / 2.0,
        top + plot_h / 2.0
    );
    out
}

/// The image of `app` a mode runs.
fn image(e: &Env, app: &App, mode: &str) -> String {
    let n = app.name;
    match mode {
        "OCI" => format!("{}/{n}:v1", e.host()),
        "lazy" => format!("{}/{n}:obd", e.host()),
        "trace" => format!("{}/{n}-traced:v1", e.host()),
        _ => format!("{}/{n}:turbo", e.host()),
    }
}

/// Starts a container of `image` (host network) and waits until it is ready.
fn start(e: &Env, app: &App, snapshotter: &str, image: &str, id: &str) {
    corpus::start(
        e,
        "default",
        app,
        snapshotter,
        image,
        id,
        Duration::from_secs(120),
    )
    .unwrap();
}

/// Pull (for a cold start) and start; seconds to ready.
fn cold(e: &Env, app: &App, mode: &str, id: &str) -> f64 {
    let img = image(e, app, mode);
    let t = Instant::now();
    if mode == "OCI" {
        e.ctr_pull("default", "overlayfs", &[], &img);
        start(e, app, "overlayfs", &img, id);
    } else {
        e.rpull(&img);
        start(e, app, "overlaybd", &img, id);
    }
    t.elapsed().as_secs_f64()
}

fn main() {
    if std::env::args().any(|a| a == "--list") || !require() {
        return;
    }
    let rounds = e2e_tests::bench::number_arg(3);
    let apps = corpus::ci_subset();
    // OBD_MODES picks modes (comma-separated) for a quick look; the table needs all four.
    let modes: Vec<&str> = match std::env::var("OBD_MODES") {
        Ok(want) => MODES
            .into_iter()
            .filter(|m| want.split(',').any(|w| w.eq_ignore_ascii_case(m)))
            .collect(),
        Err(_) => MODES.to_vec(),
    };
    let mut e = Env::start(Options::default());
    let mut sizes = BTreeMap::new();
    for app in &apps {
        let bytes = corpus::push(&e.registry_addr, app, "v1").expect("mmdebstrap");
        let n = app.name;
        let extra = std::env::var("OBD_CONVERT_ARGS").unwrap_or_default();
        let extra: Vec<&str> = extra.split_whitespace().collect();
        let out = e.convert_with(&extra, &format!("{n}:v1"), &format!("{n}:obd"));
        for l in out.lines().filter(|l| l.starts_with("size: ")) {
            println!("corpus_start: {n} converted with {extra:?}: {l}");
        }
        if modes.contains(&"TurboOCI") {
            e.convert_with(&["--turbo-oci"], &format!("{n}:v1"), &format!("{n}:turbo"));
        }
        if modes.contains(&"trace") {
            // The trace of a start: the app's command, recorded for 10 s.
            let cmd = corpus::command(app, free_port());
            let cmd: Vec<&str> = cmd.iter().map(String::as_str).collect();
            e.record_trace(&image(&e, app, "lazy"), &image(&e, app, "trace"), 10, &cmd);
        }
        sizes.insert(n, bytes);
        println!(
            "corpus_start: {n}: {:.1} MB of gzip layers",
            bytes as f64 / 1e6
        );
    }
    let charts = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/charts");
    std::fs::create_dir_all(&charts).unwrap();
    let rates: Vec<u64> = match std::env::var("OBD_RATES") {
        Ok(v) => v
            .split(',')
            .map(|r| r.trim().parse().expect("OBD_RATES: MB/s"))
            .collect(),
        Err(_) => vec![100, 25],
    };
    for rate_mb in rates {
        e.relay.set_rate(rate_mb * 1_000_000);
        let (mut times, mut fetched) = (Vec::new(), Vec::new());
        for app in &apps {
            let mut got: BTreeMap<&str, (Vec<f64>, u64)> = BTreeMap::new();
            for round in 0..rounds {
                for mode in modes.iter().copied() {
                    e.reset_host();
                    drop_caches();
                    let before = e.relay.served();
                    let secs = cold(&e, app, mode, &format!("c{round}"));
                    e.remove_containers("default");
                    let m = got.entry(mode).or_default();
                    m.0.push(secs);
                    m.1 = e.relay.served() - before;
                }
            }
            // Without an OCI run the ratios say NaN.
            let oci = got.get("OCI").map_or(f64::NAN, |g| median(g.0.clone()));
            let cells: Vec<String> = modes
                .iter()
                .map(|m| {
                    let t = median(got[m].0.clone());
                    format!(
                        "{m} {t:.2} s ({:.1} MB, {:.2}x OCI)",
                        got[m].1 as f64 / 1e6,
                        t / oci
                    )
                })
                .collect();
            println!(
                "{} {rate_mb:>3} MB/s to ready: {}",
                app.name,
                cells.join(" | ")
            );
            if modes.len() < MODES.len() {
                continue;
            }
            times.push((app.name, MODES.map(|m| median(got[m].0.clone())).to_vec()));
            fetched.push((app.name, MODES.map(|m| got[m].1 as f64 / 1e6).to_vec()));
        }
        if times.is_empty() {
            continue; // some modes only: the charts stay as they are
        }
        for (what, unit, groups) in [
            ("time", "seconds to ready", &times),
            ("bytes", "MB the registry served", &fetched),
        ] {
            let title = format!("Cold start at {rate_mb} MB/s: {unit} (medians of {rounds})");
            let path = charts.join(format!("corpus-{what}-{rate_mb}.svg"));
            std::fs::write(&path, bars(&title, unit, groups)).unwrap();
            println!("wrote {}", path.display());
        }
    }
    // Warm: the lazy image again, its caches full (device detached in between: a new
    // container attaches it), page cache dropped: the start alone, and the pull (the image
    // removed from containerd first, its blocks still in the daemon's cache) then the start,
    // which is what a cold time includes.
    e.relay.set_rate(0);
    if std::env::var("OBD_WARM").is_ok_and(|v| v == "0") {
        return;
    }
    for app in &apps {
        let (mut warm, mut warm_pull) = (Vec::new(), Vec::new());
        for round in 0..rounds {
            e.reset_host();
            cold(&e, app, "lazy", &format!("w{round}"));
            e.remove_containers("default");
            drop_caches();
            let img = image(&e, app, "lazy");
            let t = Instant::now();
            start(&e, app, "overlaybd", &img, &format!("x{round}"));
            warm.push(t.elapsed().as_secs_f64());
            e.remove_containers("default");
            e.ctr("default", &["images", "rm", &img]);
            drop_caches();
            warm_pull.push(cold(&e, app, "lazy", &format!("y{round}")));
            e.remove_containers("default");
        }
        println!(
            "{} warm start (lazy image, caches full): {:.2} s; pull and start: {:.2} s",
            app.name,
            median(warm),
            median(warm_pull)
        );
    }
}
