//! What an operator runs besides `serve`: `version`, `check-config`, `health`, JSON logs.

use std::time::Duration;

use apiary_tests::{Server, apiary};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn version_names_the_build_and_what_it_speaks() {
    let out = apiary(&["version"], &[]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.starts_with(&format!("apiary {}", env!("CARGO_PKG_VERSION"))),
        "{text}"
    );
    assert!(
        text.contains("DataFusion") && text.contains("Delta Lake"),
        "{text}"
    );
}

#[test]
fn check_config_passes_a_good_configuration_and_names_the_first_problem() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let root = root.to_str().unwrap();
    let ok = apiary(&["check-config", "--storage", root], &[]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    let text = String::from_utf8_lossy(&ok.stdout);
    assert!(text.contains("configuration OK"), "{text}");
    // Nothing was written: checking is read-only.
    assert!(!dir.path().join("root").join("_apiary").exists());

    let cases: &[(&[&str], &str)] = &[
        (&["--token-secret", "short"], "at least 16 characters"),
        (
            &["--user", "alice:not-a-hash"],
            "not an argon2 password hash",
        ),
        (&["--listen", "0.0.0.0:50051"], "without authentication"),
        (
            &[
                "--tls-cert",
                "/nonexistent.pem",
                "--tls-key",
                "/nonexistent.key",
            ],
            "/nonexistent.pem",
        ),
        (&["--max-message-size", "50%"], "takes a size"),
        // What serve refuses at start, check-config refuses too.
        (&["--metrics-listen", "0.0.0.0:9090"], "--metrics-public"),
    ];
    for (extra, expect) in cases {
        let mut args = vec!["check-config", "--storage", root];
        args.extend_from_slice(extra);
        let out = apiary(&args, &[]);
        assert!(!out.status.success(), "{extra:?} passed");
        assert!(stderr(&out).contains(expect), "{extra:?}: {}", stderr(&out));
    }
    // Unreachable storage fails with the storage named.
    let out = apiary(
        &[
            "check-config",
            "--storage",
            "s3://bucket/p",
            "--s3-endpoint",
            "http://127.0.0.1:9",
            "--s3-access-key-id",
            "a",
            "--s3-secret-access-key",
            "b",
        ],
        &[],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("reaching storage"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn health_and_json_logs() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let server = Server::start(
        root.to_str().unwrap(),
        &["--metrics-listen", "127.0.0.1:0", "--log-format", "json"],
        &[],
    );
    let url = format!("http://{}/healthz", server.metrics_addr());
    let out = apiary(&["health", "--url", &url], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    // Every log line is one JSON object.
    assert!(server.wait_log("listening on", Duration::from_secs(10)));
    for line in server.log().lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            v.get("level").is_some() && v.get("fields").is_some(),
            "{line}"
        );
    }
    drop(server);
    let out = apiary(&["health", "--url", &url, "--timeout", "2s"], &[]);
    assert!(!out.status.success(), "a stopped node is not healthy");
}
