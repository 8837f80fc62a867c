//! The registry/config fuzz body over seeds and mutations of them (the fuzz target
//! `registry_config` runs the same body under libFuzzer).

const SEEDS: &[&str] = &[
    "\0Bearer realm=\"https://auth.example/token\",service=\"reg\",scope=\"repository:a/b:pull\"",
    "\0Basic realm=\"x\"",
    "\x01{\"token\":\"abc\",\"expires_in\":300}",
    "\x01{\"access_token\":\"x\",\"expires_in\":18446744073709551615}",
    "\x02{\"auths\":{\"https://index.docker.io/v1/\":{\"auth\":\"dXNlcjpwYXNz\"},\"127.0.0.1:5000\":{\"username\":\"a\",\"password\":\"b\"}}}",
    "\x03server = \"https://reg.example:5000\"\n[host.\"http://m:1/v2\"]\ncapabilities = [\"pull\"]\nca = [\"a\", \"b\"]\nclient = [[\"c\", \"k\"]]\n[host.\"http://m:1/v2\".header]\nx = [\"1\", \"2\"]\n",
];

#[test]
fn parsers_never_panic_on_mutated_input() {
    for (i, seed) in SEEDS.iter().enumerate() {
        overlaybd_registry::fuzz::config(seed.as_bytes());
        for d in test_support::mutations(seed.as_bytes(), 3000, 7 + i as u64) {
            overlaybd_registry::fuzz::config(&d);
        }
    }
}
