//! The Grafana dashboard (deploy/grafana/overlaybd-rs.json) asks only for what the binaries
//! export: every metric and every label its queries name is in what a daemon, a snapshotter,
//! a P2P root and an agent served after a lazy pull and a run through the agent.

use std::collections::{BTreeMap, BTreeSet};

use e2e_tests::p2p::{Cluster, ClusterOptions};
use e2e_tests::{require, serial, Env, Options};

/// Metric name → label names, from Prometheus text.
fn exported(text: &str, into: &mut BTreeMap<String, BTreeSet<String>>) {
    for l in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (name, rest) = match l.find(['{', ' ']) {
            Some(i) => l.split_at(i),
            None => (l, ""),
        };
        let labels = into.entry(name.to_string()).or_default();
        if let Some(body) = rest.strip_prefix('{').and_then(|r| r.split_once('}')) {
            for kv in body.0.split(',') {
                if let Some((k, _)) = kv.split_once('=') {
                    labels.insert(k.trim().to_string());
                }
            }
        }
    }
}

/// The metric names and the label names a PromQL expression uses.
fn used(expr: &str) -> (Vec<String>, Vec<String>) {
    let mut names = Vec::new();
    let mut labels = Vec::new();
    let words: Vec<(usize, &str)> = expr
        .match_indices(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .fold((0, Vec::new()), |(start, mut v), (i, _)| {
            if i > start {
                v.push((start, &expr[start..i]));
            }
            (i + 1, v)
        })
        .1;
    for (i, w) in &words {
        if w.starts_with("overlaybd_") || w.starts_with("p2p_") {
            names.push(w.to_string());
        }
        // Grouping labels: `by (a, b)`.
        let before = expr[..*i].trim_end();
        if before.ends_with("by (")
            || (before.ends_with(',')
                && expr[..*i]
                    .rfind("by (")
                    .is_some_and(|b| !expr[b..*i].contains(')')))
        {
            labels.push(w.to_string());
        }
    }
    (names, labels)
}

#[test]
fn every_dashboard_query_names_a_metric_and_labels_the_binaries_export() {
    if !require() {
        return;
    }
    let _g = serial();
    let c = Cluster::start(ClusterOptions {
        roots: 1,
        agents: 1,
        ..Default::default()
    });
    let env = Env::start(Options {
        p2p_agent: Some(c.agents[0].prefix()),
        metrics: true,
        ..Default::default()
    });
    let (image, _) = env.converted_sample("dash", 8);
    env.rpull(&image);
    let out = env.ctr(
        "default",
        &["run", "--rm", "--snapshotter", "overlaybd", &image, "d1"],
    );
    assert_eq!(out.trim(), e2e_tests::image::GREETING);

    let mut have = BTreeMap::new();
    for who in ["daemon", "snapshotter"] {
        exported(&env.scrape(who), &mut have);
    }
    for n in c.roots.iter().chain(&c.agents) {
        let text = reqwest::blocking::get(format!("{}/metrics", n.url))
            .unwrap()
            .text()
            .unwrap();
        exported(&text, &mut have);
    }
    // Labels added by Prometheus itself.
    let scrape_labels = ["instance", "job", "le"];

    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/grafana/overlaybd-rs.json");
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut queries = 0;
    let mut seen = BTreeSet::new();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().unwrap();
            let (names, labels) = used(expr);
            assert!(!names.is_empty(), "{}: {expr} names no metric", p["title"]);
            for n in &names {
                let l = have.get(n).unwrap_or_else(|| {
                    panic!(
                        "{}: {n} is not exported; exported: {:#?}",
                        p["title"],
                        have.keys()
                    )
                });
                for label in &labels {
                    assert!(
                        l.contains(label) || scrape_labels.contains(&label.as_str()),
                        "{}: {n} has no label {label} ({l:?})",
                        p["title"]
                    );
                }
                seen.insert(n.clone());
            }
            queries += 1;
        }
    }
    eprintln!("{queries} queries over {} metrics", seen.len());
    // What the issue asked the dashboard to show is there.
    for m in [
        "overlaybd_fetch_bytes_total",
        "overlaybd_cache_served_bytes_total",
        "overlaybd_device_read_seconds_bucket",
        "overlaybd_device_read_errors_total",
        "overlaybd_fetch_fallbacks_total",
        "overlaybd_snapshotter_errors_total",
        "p2p_tree_max_depth",
    ] {
        assert!(seen.contains(m), "the dashboard does not show {m}");
    }
}

#[test]
fn the_query_parser_finds_names_and_grouping_labels() {
    let (n, l) = used(
        "histogram_quantile(0.99, sum by (le, method) (rate(overlaybd_snapshotter_call_seconds_bucket[$__rate_interval])))",
    );
    assert_eq!(n, ["overlaybd_snapshotter_call_seconds_bucket"]);
    assert_eq!(l, ["le", "method"]);
    let mut m = BTreeMap::new();
    exported("# TYPE x counter\nx{a=\"1\",b=\"2\"} 3\ny 4\n", &mut m);
    assert_eq!(m["x"], BTreeSet::from(["a".to_string(), "b".to_string()]));
    assert!(m["y"].is_empty());
}
