//! `unbroken serve` as an operator starts it: a dangerous or mistyped start-up must be
//! refused with a message that says why. (What a `kill -9` does to answers in flight is
//! in `takeover.rs`.)
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test's panic is its failure report

use std::process::{Command, Output, Stdio};

fn serve(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_unbroken"))
        .arg("serve")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn a_public_address_without_api_keys_is_refused() {
    let out = serve(&["--listen", "0.0.0.0:0", "--store", "memory"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--allow-unauthenticated"), "{stderr}");
    assert!(
        out.stdout.is_empty(),
        "it never listened: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn an_unknown_config_key_is_named() {
    let dir = tempfile::tempdir().unwrap();
    for (toml, key) in [
        ("[server]\nlisten_port = 8080\n", "listen_port"),
        (
            "[[models]]\nname = \"m\"\ntargets = [{ provider = \"simulator\", tokenz = 5 }]\n",
            "tokenz",
        ),
    ] {
        let config = dir.path().join("bad.toml");
        std::fs::write(&config, toml).unwrap();
        let out = serve(&[
            "--config",
            config.to_str().unwrap(),
            "--store",
            "memory",
            "--listen",
            "127.0.0.1:0",
        ]);
        assert!(!out.status.success(), "{toml} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(key), "{key} not named in: {stderr}");
    }
}
