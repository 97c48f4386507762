//! Configuration layering (file < MYRMEX_* environment < flags), validation,
//! the data directory, and the CLI's commands.

mod common;

use common::*;
use serde_json::json;

async fn store_location(cmd: tokio::process::Command) -> serde_json::Value {
    let server = HttpServer::start(cmd).await;
    let c = server.client(Era::Legacy, None).await;
    let st = ok(&c, "get_system_status", json!({})).await;
    st["store"].clone()
}

#[tokio::test]
async fn file_then_environment_then_flags() {
    let env = Env::local();
    let a = env.path().join("a.db");
    let b = env.path().join("b.db");
    let cfg = env.config(&format!("store = \"sqlite://{}\"\n", a.display()));
    let cfgs = cfg.to_str().unwrap();

    // File only.
    let st =
        store_location(env.command(&["--config", cfgs, "serve", "--http", "127.0.0.1:0"])).await;
    assert_eq!(st["location"], json!(a.display().to_string()));

    // Environment beats the file.
    let mut cmd = env.command(&["--config", cfgs, "serve", "--http", "127.0.0.1:0"]);
    cmd.env("MYRMEX_STORE", format!("sqlite://{}", b.display()));
    let st = store_location(cmd).await;
    assert_eq!(st["location"], json!(b.display().to_string()));

    // A flag beats both.
    let mut cmd = env.command(&[
        "--config",
        cfgs,
        "--store",
        "memory",
        "serve",
        "--http",
        "127.0.0.1:0",
    ]);
    cmd.env("MYRMEX_STORE", format!("sqlite://{}", b.display()));
    let st = store_location(cmd).await;
    assert_eq!(st["kind"], "memory");

    // MYRMEX_CONFIG names the file; nested keys use __.
    let mut cmd = env.command(&["serve"]);
    cmd.env("MYRMEX_CONFIG", &cfg)
        .env("MYRMEX_HTTP__BIND", "127.0.0.1:0")
        .args(["--http"]);
    let st = store_location(cmd).await;
    assert_eq!(st["location"], json!(a.display().to_string()));
}

#[tokio::test]
async fn default_data_dir_is_created_under_the_platform_data_dir() {
    let home = tempfile::tempdir().unwrap();
    let mut cmd = tokio::process::Command::new(bin());
    cmd.args(["serve", "--http", "127.0.0.1:0"])
        .env("HOME", home.path())
        .env("XDG_DATA_HOME", home.path().join("data"))
        .env_remove("MYRMEX_DATA_DIR")
        .env_remove("MYRMEX_STORE")
        .env("MYRMEX_LOG_LEVEL", "info")
        .kill_on_drop(true);
    let server = HttpServer::start(cmd).await;
    let c = server.client(Era::Legacy, None).await;
    let st = ok(&c, "get_system_status", json!({})).await;
    let db = home.path().join("data/myrmex/myrmex.db");
    assert_eq!(st["store"]["location"], json!(db.display().to_string()));
    assert!(db.is_file());
}

async fn fails_with(env: &Env, args: &[&str], envs: &[(&str, &str)], needle: &str) {
    let mut cmd = env.command(args);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = cmd.output().await.unwrap();
    assert!(!out.status.success(), "{args:?} should fail");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(needle),
        "{args:?}: expected '{needle}' in: {stderr}"
    );
    assert!(out.stdout.is_empty(), "errors go to stderr");
}

#[tokio::test]
async fn bad_configuration_is_refused_at_start_with_a_reason() {
    let env = Env::local();
    let typo = env.path().join("typo.toml");
    std::fs::write(&typo, "[sessions]\nidle_ttl = 5\n").unwrap();
    fails_with(
        &env,
        &["--config", typo.to_str().unwrap(), "serve"],
        &[],
        "idle_ttl",
    )
    .await;
    fails_with(
        &env,
        &["--config", "/nonexistent/myrmex.toml", "serve"],
        &[],
        "does not exist",
    )
    .await;
    fails_with(
        &env,
        &["--store", "mongodb://x", "serve"],
        &[],
        "not understood",
    )
    .await;
    fails_with(&env, &["--log-level", "[[[", "serve"], &[], "log_level").await;
    fails_with(
        &env,
        &["serve", "--http", "not-an-address"],
        &[],
        "not an address",
    )
    .await;
    fails_with(
        &env,
        &["serve"],
        &[("MYRMEX_LIMITS__MAX_PAGE_SIZE", "0")],
        "default_page_size",
    )
    .await;
    let bad_hash = env.path().join("hash.toml");
    std::fs::write(
        &bad_hash,
        "[[auth.tokens]]\nname = \"x\"\ntoken_sha256 = \"abc\"\n",
    )
    .unwrap();
    fails_with(
        &env,
        &["--config", bad_hash.to_str().unwrap(), "serve"],
        &[],
        "64 hex",
    )
    .await;
}

#[tokio::test]
async fn every_command_has_help() {
    for args in [
        vec!["--help"],
        vec!["serve", "--help"],
        vec!["schemas", "--help"],
        vec!["hash-token", "--help"],
    ] {
        let out = tokio::process::Command::new(bin())
            .args(&args)
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "{args:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("Usage"), "{args:?}: {text}");
    }
    let out = tokio::process::Command::new(bin())
        .arg("--help")
        .output()
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in ["--config", "--data-dir", "--store", "--log-level"] {
        assert!(text.contains(flag), "global flag {flag} missing");
    }
}
