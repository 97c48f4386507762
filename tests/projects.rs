//! Projects through a real MCP client: every shipped template creates the
//! exact tree and docs of its golden file (`tests/golden/<template>.txt`;
//! `TEST_MYRMEX_UPDATE_GOLDEN=1` rewrites them), links resolve at every depth,
//! config overrides merge, path escapes and name clashes are refused with
//! nothing written, creation is atomic under an injected failure, hand-edited
//! docs survive regeneration, every manage_project operation, projects found
//! on disk are registered, and a generated project runs build-and-test.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::*;
use serde_json::{Value, json};

fn toml_str(p: &Path) -> String {
    p.to_str().unwrap().replace('\\', "\\\\")
}

/// Every file under `dir`, relative and sorted, with its content.
fn tree(dir: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(dir).unwrap().to_str().unwrap().to_string();
            if p.is_dir() {
                out.insert(format!("{rel}/"), String::new());
                stack.push(p);
            } else {
                out.insert(rel, std::fs::read_to_string(&p).unwrap());
            }
        }
    }
    out
}

/// The tree as one text, with the values that change per run replaced.
fn golden_text(dir: &Path, project_id: &str) -> String {
    let path = dir.to_str().unwrap();
    let time = regex_lite_times;
    let mut s = String::new();
    for (rel, content) in tree(dir) {
        s.push_str(&format!("=== {rel}\n"));
        let c = content
            .replace(path, "<PATH>")
            .replace(project_id, "<PROJECT_ID>");
        s.push_str(&time(&c));
        if !c.is_empty() && !c.ends_with('\n') {
            s.push('\n');
        }
    }
    s
}

/// Replace RFC 3339 timestamps (2026-11-22T07:00:00.000Z) with <TIME>.
fn regex_lite_times(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::new();
    let mut i = 0;
    while i < b.len() {
        let rest = &s[i..];
        let looks = rest.len() >= 24
            && rest.as_bytes()[4] == b'-'
            && rest.as_bytes()[10] == b'T'
            && rest.as_bytes()[23] == b'Z'
            && rest[..4].bytes().all(|c| c.is_ascii_digit());
        if looks {
            out.push_str("<TIME>");
            i += 24;
        } else {
            let ch = rest.chars().next().unwrap();
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

fn check_golden(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/golden/{name}.txt"));
    if std::env::var("TEST_MYRMEX_UPDATE_GOLDEN").is_ok() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!(
            "{} is missing (TEST_MYRMEX_UPDATE_GOLDEN=1 writes it)",
            path.display()
        )
    });
    if expected != actual {
        let first = expected
            .lines()
            .zip(actual.lines())
            .enumerate()
            .find(|(_, (a, b))| a != b)
            .map(|(i, (a, b))| format!("line {}: expected {a:?}, got {b:?}", i + 1))
            .unwrap_or_else(|| "lengths differ".into());
        panic!("{name} differs from its golden file: {first}");
    }
}

/// Every relative Markdown link of every .md file points at a file that exists.
fn check_links(dir: &Path) -> usize {
    let mut n = 0;
    for (rel, content) in tree(dir) {
        if !rel.ends_with(".md") {
            continue;
        }
        let base = dir.join(&rel);
        let base = base.parent().unwrap();
        let mut rest = content.as_str();
        while let Some(i) = rest.find("](") {
            let after = &rest[i + 2..];
            let end = after.find(')').unwrap();
            let target = &after[..end];
            if !target.starts_with("http") && !target.starts_with('#') {
                let t = base.join(target);
                assert!(
                    t.is_file(),
                    "{rel}: link {target} -> {} does not exist",
                    t.display()
                );
                n += 1;
            }
            rest = &after[end..];
        }
    }
    n
}

fn projects_root(env: &Env) -> PathBuf {
    env.path().join("projects")
}

#[tokio::test]
async fn every_shipped_template_creates_its_golden_tree_with_working_links() {
    let env = Env::new();
    let c = env.stdio(Era::Modern, &["--store", "memory"]).await;
    let list = ok(&c, "list_templates", json!({})).await;
    let names: Vec<&str> = list["templates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["ai_analysis", "data_pipeline", "web_application"]);
    assert!(
        list["templates"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["valid"] == true),
        "{list}"
    );
    for t in names {
        let v = ok(
            &c,
            "create_project",
            json!({"project_name": format!("p-{t}"), "template_name": t, "author": "Ada"}),
        )
        .await;
        assert_eq!(v["status"], "created");
        assert_eq!(v["template_used"], t);
        let dir = PathBuf::from(v["project_path"].as_str().unwrap());
        assert_eq!(dir, projects_root(&env).join(format!("p-{t}")));
        let files: Vec<&str> = v["files_created"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_str().unwrap())
            .collect();
        assert!(
            files.contains(&"README.md") && files.contains(&".myrmex/project.json"),
            "{v}"
        );
        check_golden(t, &golden_text(&dir, v["project_id"].as_str().unwrap()));
        let links = check_links(&dir);
        assert!(links > 10, "{t}: only {links} links checked");
    }
    // Depth two (data/raw) links two levels up, and its parent link names the project.
    let raw =
        std::fs::read_to_string(projects_root(&env).join("p-data_pipeline/data/raw/README.md"))
            .unwrap();
    assert!(raw.contains("[p-data_pipeline](../../README.md)"), "{raw}");
    // The root README links to its documented children.
    let root =
        std::fs::read_to_string(projects_root(&env).join("p-data_pipeline/README.md")).unwrap();
    assert!(root.contains("(data/raw/README.md)"), "{root}");
}

#[tokio::test]
async fn config_overrides_merge_and_placeholders_render() {
    let env = Env::new();
    let c = env.stdio(Era::Legacy, &["--store", "memory"]).await;
    let v = ok(
        &c,
        "create_project",
        json!({"name": "etl", "template": "data_pipeline", "description": "ETL for {{project_name}}",
               "tags": ["team-a"],
               "config_overrides": {"processing": {"batch_size": 500}, "extra": {"k": [1]}}}),
    )
    .await;
    let p = ok(&c, "get_project", json!({"project": v["project_id"]})).await;
    let cfg = &p["config"];
    assert_eq!(cfg["processing"]["batch_size"], 500);
    assert_eq!(cfg["processing"]["parallel"], true, "untouched keys stay");
    assert_eq!(cfg["processing"]["memory_limit"], "8GB");
    assert_eq!(cfg["extra"], json!({"k": [1]}));
    assert_eq!(
        p["description"], "ETL for {{project_name}}",
        "the caller's text is kept as given"
    );
    assert_eq!(p["type"], "data_pipeline");
    assert_eq!(p["status"], "planning");
    assert_eq!(p["workflows"], json!(["data-processing", "visualization"]));
    assert!(
        p["docs"]
            .as_array()
            .unwrap()
            .contains(&json!("data/raw/AGENTS.md"))
    );
    let ai = ok(
        &c,
        "create_project",
        json!({"name": "ai", "template": "ai_analysis"}),
    )
    .await;
    let p = ok(&c, "get_project", json!({"project": "ai"})).await;
    assert_eq!(
        p["description"],
        "AI-powered code analysis and insights project"
    );
    assert!(
        p["config"]["commands"]["build"]
            .as_str()
            .unwrap()
            .contains("configured for ai:"),
        "{{{{project_name}}}} renders in default_config: {}",
        p["config"]
    );
    let analysis = std::fs::read_to_string(
        Path::new(ai["project_path"].as_str().unwrap()).join("config/analysis.json"),
    )
    .unwrap();
    assert!(analysis.contains("\"project\": \"ai\""), "{analysis}");
    // An empty (custom) project.
    let e = ok(&c, "create_project", json!({"name": "bare"})).await;
    let p = ok(&c, "get_project", json!({"project": e["project_id"]})).await;
    assert_eq!(p["type"], "custom");
    assert_eq!(p["description"], "Custom project");
    // Filters.
    let page = ok(&c, "list_projects", json!({"tag": "team-a"})).await;
    assert_eq!(page["projects"].as_array().unwrap().len(), 1);
    let page = ok(&c, "list_projects", json!({"type": "custom"})).await;
    assert_eq!(page["projects"][0]["name"], "bare");
    let page = ok(&c, "list_projects", json!({"limit": 2})).await;
    assert_eq!(page["projects"].as_array().unwrap().len(), 2);
    let rest = ok(&c, "list_projects", json!({"cursor": page["next_cursor"]})).await;
    assert_eq!(rest["projects"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn bad_paths_names_and_templates_are_refused_with_nothing_written() {
    let env = Env::new();
    let root = projects_root(&env);
    let outside = env.path().join("outside");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::os::unix::fs::symlink(&outside, root.join("escape")).unwrap();
    let c = env.stdio(Era::Modern, &["--store", "memory"]).await;
    for path in [
        json!("../evil"),
        json!("a/../../evil"),
        json!(outside.join("abs").to_str().unwrap()),
        json!("/etc/myrmex-evil"),
        json!("escape/inside"),
    ] {
        err(
            &c,
            "create_project",
            json!({"name": "evil", "template": "web_application", "path": path}),
            "PERMISSION_DENIED",
        )
        .await;
    }
    err(
        &c,
        "create_project",
        json!({"name": "evil", "project_path": "."}),
        "PERMISSION_DENIED",
    )
    .await;
    assert!(
        std::fs::read_dir(&outside).unwrap().next().is_none(),
        "nothing written outside"
    );
    let e = err(
        &c,
        "create_project",
        json!({"name": "x", "template": "nope"}),
        "TEMPLATE_NOT_FOUND",
    )
    .await;
    assert!(e["hint"].as_str().unwrap().contains("data_pipeline"), "{e}");
    err(
        &c,
        "create_project",
        json!({"name": "../x"}),
        "INVALID_PARAMETERS",
    )
    .await;
    err(
        &c,
        "create_project",
        json!({"template": "web_application"}),
        "INVALID_PARAMETERS",
    )
    .await;
    err(
        &c,
        "create_project",
        json!({"name": "a", "project_name": "b"}),
        "INVALID_PARAMETERS",
    )
    .await;
    ok(&c, "create_project", json!({"name": "taken"})).await;
    err(
        &c,
        "create_project",
        json!({"name": "taken"}),
        "PROJECT_EXISTS",
    )
    .await;
    std::fs::create_dir_all(root.join("occupied")).unwrap();
    std::fs::write(root.join("occupied/file"), "x").unwrap();
    err(
        &c,
        "create_project",
        json!({"name": "occupied"}),
        "PROJECT_EXISTS",
    )
    .await;
    // Nested paths inside the root are fine.
    let v = ok(
        &c,
        "create_project",
        json!({"name": "deep", "path": "team/deep"}),
    )
    .await;
    assert_eq!(
        v["project_path"],
        json!(root.join("team/deep").to_str().unwrap())
    );
    let page = ok(&c, "list_projects", json!({})).await;
    assert_eq!(page["projects"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn user_templates_are_validated_and_creation_is_atomic() {
    let env = Env::new();
    let tdir = env.path().join("tpl");
    std::fs::create_dir_all(tdir.join("svc/files")).unwrap();
    std::fs::write(
        tdir.join("svc/files/main.txt"),
        "service {{project_name}} by {{author}}\n",
    )
    .unwrap();
    std::fs::write(tdir.join("svc/files/gone.txt"), "soon deleted").unwrap();
    std::fs::write(
        tdir.join("svc.json"),
        json!({"name": "svc", "type": "custom", "description": "Service {{project_name}}",
               "directory_structure": ["src/app/", "docs/"],
               "files": {"src/app/main.txt": {"source": "files/main.txt"}, "docs/inline.md": "# {{project_name}}\n", "late.txt": {"source": "files/gone.txt"}},
               "required_modules": ["core"],
               "documentation_config": {"nested_docs": ["src/app", "docs"], "doc_variables": {"team": "blue"}, "doc_links": {"enabled": true, "parent_link": true, "child_links": false}}})
        .to_string(),
    )
    .unwrap();
    std::fs::write(
        tdir.join("needs-shell.json"),
        json!({"name": "needs-shell", "type": "custom", "required_modules": ["shell"]}).to_string(),
    )
    .unwrap();
    std::fs::write(
        tdir.join("broken.json"),
        json!({"name": "broken", "type": "custom", "directory_structure": ["../up"], "workflows": ["no-such-flow"], "required_modules": ["ai_code_editing"]}).to_string(),
    )
    .unwrap();
    std::fs::write(tdir.join("garbage.json"), "{not json").unwrap();
    let toml = format!("[projects]\ntemplate_dirs = [\"{}\"]\n", toml_str(&tdir));
    let c = env.stdio_config(Era::Legacy, &toml).await;
    let list = ok(&c, "list_templates", json!({})).await;
    let by: BTreeMap<String, Value> = list["templates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["name"].as_str().unwrap().to_string(), t.clone()))
        .collect();
    assert_eq!(by["svc"]["valid"], true, "{list}");
    let problems = by["broken"]["problems"].to_string();
    assert_eq!(by["broken"]["valid"], false);
    assert!(
        problems.contains("'..'")
            && problems.contains("no-such-flow")
            && problems.contains("ai_code_editing"),
        "{problems}"
    );
    assert!(
        list["unreadable"][0]
            .as_str()
            .unwrap()
            .contains("garbage.json"),
        "{list}"
    );
    let health = ok(&c, "get_health_status", json!({})).await;
    assert_eq!(
        health["components"]["templates"]["status"], "degraded",
        "{health}"
    );
    err(
        &c,
        "create_project",
        json!({"name": "b", "template": "broken"}),
        "INVALID_PARAMETERS",
    )
    .await;
    let e = err(
        &c,
        "create_project",
        json!({"name": "s", "template": "needs-shell"}),
        "MODULE_NOT_FOUND",
    )
    .await;
    assert!(
        e["hint"]
            .as_str()
            .unwrap()
            .contains("[modules.shell] enabled = true"),
        "{e}"
    );

    // An injected failure: a source file disappears after the template was loaded.
    std::fs::remove_file(tdir.join("svc/files/gone.txt")).unwrap();
    err(
        &c,
        "create_project",
        json!({"name": "half", "template": "svc"}),
        "INTERNAL_ERROR",
    )
    .await;
    let root = env.path().join("projects");
    let left: Vec<String> = std::fs::read_dir(&root)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect()
        })
        .unwrap_or_default();
    assert!(left.is_empty(), "nothing left behind: {left:?}");
    assert!(
        ok(&c, "list_projects", json!({})).await["projects"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    std::fs::write(tdir.join("svc/files/gone.txt"), "back").unwrap();
    let v = ok(
        &c,
        "create_project",
        json!({"name": "svc1", "template": "svc", "author": "Bo"}),
    )
    .await;
    let dir = PathBuf::from(v["project_path"].as_str().unwrap());
    assert_eq!(
        std::fs::read_to_string(dir.join("src/app/main.txt")).unwrap(),
        "service svc1 by Bo\n"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("docs/inline.md")).unwrap(),
        "# svc1\n"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("late.txt")).unwrap(),
        "back"
    );
    let p = ok(&c, "get_project", json!({"project": "svc1"})).await;
    assert_eq!(p["description"], "Service svc1");
    // child_links off: the root README does not list its children; parent links are there.
    let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
    assert!(!readme.contains("## Subfolders"), "{readme}");
    let nested = std::fs::read_to_string(dir.join("src/app/README.md")).unwrap();
    assert!(nested.contains("(../../README.md)"), "{nested}");
    check_links(&dir);
}

#[tokio::test]
async fn regeneration_keeps_hand_edited_docs_and_manage_project_operations_work() {
    let env = Env::new();
    let archives = env.path().join("archives");
    let c = env.stdio(Era::Modern, &["--store", "memory"]).await;
    let v = ok(
        &c,
        "create_project",
        json!({"name": "web", "template": "web_application", "tags": ["a"]}),
    )
    .await;
    let dir = PathBuf::from(v["project_path"].as_str().unwrap());
    // The user takes README.md over (removes the marker) and scribbles in AGENTS.md (keeps it).
    let readme = std::fs::read_to_string(dir.join("README.md")).unwrap();
    let mine: String = readme.lines().skip(1).collect::<Vec<_>>().join("\n") + "\nMy notes.\n";
    std::fs::write(dir.join("README.md"), &mine).unwrap();
    std::fs::write(dir.join("frontend/AGENTS.md"), "<!-- generated by myrmex: delete this line to keep your edits; generate_docs then leaves this file alone -->\nscribble").unwrap();
    std::fs::remove_file(dir.join("docs/README.md")).unwrap();
    let r = ok(&c, "generate_docs", json!({"project": "web"})).await;
    assert_eq!(r["kept"], json!(["README.md"]));
    let written = r["written"].as_array().unwrap();
    assert!(
        written.contains(&json!("frontend/AGENTS.md"))
            && written.contains(&json!("docs/README.md"))
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("README.md")).unwrap(),
        mine
    );
    assert!(
        !std::fs::read_to_string(dir.join("frontend/AGENTS.md"))
            .unwrap()
            .contains("scribble")
    );

    let s = ok(
        &c,
        "manage_project",
        json!({"project": "web", "operation": "status"}),
    )
    .await;
    assert_eq!(s["result"]["workflows"], 2);
    assert_eq!(s["result"]["status"], "planning");
    let u = ok(
        &c,
        "manage_project",
        json!({"project": v["project_id"], "operation": "update", "status": "active", "version": "1.1.0",
               "tags": ["b"], "description": "new", "config": {"frontend": {"framework": "svelte"}}}),
    )
    .await;
    assert_eq!(u["project_status"], "active");
    assert_eq!(
        u["result"]["config"]["frontend"],
        json!({"framework": "svelte", "build_tool": "vite"})
    );
    assert_eq!(u["result"]["tags"], json!(["b"]));
    let on_disk: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join(".myrmex/project.json")).unwrap())
            .unwrap();
    assert_eq!(on_disk["version"], "1.1.0");
    assert_eq!(on_disk["status"], "active");
    let m = ok(
        &c,
        "manage_project",
        json!({"project": "web", "operation": "milestone", "milestone_name": "mvp", "data": {"notes": "green"}}),
    )
    .await;
    assert_eq!(m["result"]["milestone"]["notes"], "green");
    assert!(m["result"]["milestone"]["completed_at"].is_string());
    let m = ok(
        &c,
        "manage_project",
        json!({"project": "web", "operation": "metrics", "metrics": {"coverage": 0.8}}),
    )
    .await;
    assert_eq!(m["result"], json!({"coverage": 0.8}));
    let p = ok(&c, "get_project", json!({"project": "web"})).await;
    assert_eq!(p["milestones"]["mvp"]["notes"], "green");
    assert_eq!(p["metrics"]["coverage"], 0.8);
    err(
        &c,
        "manage_project",
        json!({"project": "web", "operation": "status", "confirm": true}),
        "INVALID_PARAMETERS",
    )
    .await;
    let e = err(
        &c,
        "manage_project",
        json!({"project": "web", "operation": "explode"}),
        "INVALID_PARAMETERS",
    )
    .await;
    assert!(
        e["message"].as_str().unwrap().contains("archive"),
        "the valid operations are listed: {e}"
    );
    err(
        &c,
        "manage_project",
        json!({"project": "nope", "operation": "status"}),
        "NOT_FOUND",
    )
    .await;

    // Archive: a tar.gz with the tree under <name>/, status archived, files kept.
    let a = ok(
        &c,
        "manage_project",
        json!({"project": "web", "operation": "archive"}),
    )
    .await;
    assert_eq!(a["project_status"], "archived");
    let path = PathBuf::from(a["result"]["archive_path"].as_str().unwrap());
    assert_eq!(path, archives.join("web.tar.gz"));
    let mut names: Vec<String> = tar::Archive::new(flate2::read::GzDecoder::new(
        std::fs::File::open(&path).unwrap(),
    ))
    .entries()
    .unwrap()
    .map(|e| e.unwrap().path().unwrap().to_str().unwrap().to_string())
    .collect();
    names.sort();
    for want in [
        "web/README.md",
        "web/.myrmex/project.json",
        "web/frontend/AGENTS.md",
        "web/deploy/README.md",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
    }
    assert!(dir.join("README.md").exists(), "files are kept");
    assert_eq!(
        ok(&c, "list_projects", json!({"status": "archived"})).await["projects"][0]["name"],
        "web"
    );

    // Delete needs confirm.
    err(
        &c,
        "manage_project",
        json!({"project": "web", "operation": "delete"}),
        "INVALID_PARAMETERS",
    )
    .await;
    assert!(dir.exists());
    let d = ok(
        &c,
        "manage_project",
        json!({"project": "web", "operation": "delete", "confirm": true}),
    )
    .await;
    assert_eq!(d["result"]["deleted"], true);
    assert!(!dir.exists());
    err(&c, "get_project", json!({"project": "web"}), "NOT_FOUND").await;
}

#[tokio::test]
async fn projects_found_on_disk_are_registered_and_belong_to_their_principal() {
    let shared = tempfile::tempdir().unwrap();
    let toml = format!("[projects]\nroots = [\"{}\"]\n", toml_str(shared.path()));
    let a = Env::new();
    {
        let c = a.stdio_config(Era::Legacy, &toml).await;
        ok(
            &c,
            "create_project",
            json!({"name": "found", "template": "ai_analysis"}),
        )
        .await;
    }
    // Another server with its own (empty) store and the same projects folder.
    let b = Env::new();
    let c = b.stdio_config(Era::Modern, &toml).await;
    let page = ok(&c, "list_projects", json!({})).await;
    assert_eq!(page["projects"][0]["name"], "found", "{page}");
    let p = ok(&c, "get_project", json!({"project": "found"})).await;
    assert_eq!(p["type"], "ai_analysis");
}

#[tokio::test]
async fn a_generated_project_runs_build_and_test_in_its_folder() {
    let env = Env::new();
    let c = env
        .stdio_config(Era::Modern, "[modules.shell]\nenabled = true\n")
        .await;
    let v = ok(
        &c,
        "create_project",
        json!({"name": "app", "template": "web_application",
               "config_overrides": {"commands": {"build": "echo built > build.txt", "test": "test -f build.txt && echo tests passed"}}}),
    )
    .await;
    let dir = PathBuf::from(v["project_path"].as_str().unwrap());
    let run = ok(
        &c,
        "execute_workflow",
        json!({"workflow_name": "build-and-test", "project": "app", "wait_seconds": 30}),
    )
    .await;
    assert_eq!(run["status"], "succeeded", "{}", run["steps"]);
    assert_eq!(
        std::fs::read_to_string(dir.join("build.txt")).unwrap(),
        "built\n"
    );
    let record = std::fs::read_to_string(dir.join(".myrmex/last-build-and-test.md")).unwrap();
    assert!(
        record.contains("# build-and-test of app") && record.contains("tests passed"),
        "{record}"
    );
    let p = ok(&c, "get_project", json!({"project": "app"})).await;
    assert_eq!(p["recent_runs"][0]["run_id"], run["run_id"]);
    assert_eq!(p["active_workflows"], 0);

    // deploy runs build-and-test as a child run of the same project, then deploys.
    ok(&c, "manage_project", json!({"project": "app", "operation": "update", "config": {"commands": {"deploy": "echo shipped > deployed.txt"}}})).await;
    let run = ok(
        &c,
        "execute_workflow",
        json!({"workflow_name": "deploy", "project": "app", "wait_seconds": 30}),
    )
    .await;
    assert_eq!(run["status"], "succeeded", "{}", run["steps"]);
    assert!(dir.join("deployed.txt").exists());

    // A project workflow without a project says what is missing.
    let run = ok(
        &c,
        "execute_workflow",
        json!({"workflow_name": "build-and-test", "wait_seconds": 30}),
    )
    .await;
    assert_eq!(run["status"], "failed");
    assert!(
        run["steps"][0]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no project"),
        "{}",
        run["steps"]
    );

    // Workflows can regenerate docs with docs.generate, in the run's project by default.
    std::fs::remove_file(dir.join("AGENTS.md")).unwrap();
    ok(&c, "create_workflow", json!({"name": "redoc", "steps": [
        {"name": "docs", "module": "docs", "action": "generate", "parameters": {}},
        {"name": "where", "module": "core", "action": "echo", "parameters": {"path": "{{project.path}}", "name": "{{project.name}}"}}]})).await;
    let run = ok(
        &c,
        "execute_workflow",
        json!({"workflow_name": "redoc", "project": "app", "wait_seconds": 30}),
    )
    .await;
    assert_eq!(run["status"], "succeeded", "{}", run["steps"]);
    assert!(dir.join("AGENTS.md").exists());
    assert_eq!(run["workflow_results"]["where"]["name"], "app");
    assert_eq!(
        run["workflow_results"]["where"]["path"],
        json!(dir.to_str().unwrap())
    );

    // create_project can run the template's first workflow at once.
    let v = ok(
        &c,
        "create_project",
        json!({"name": "app2", "template": "web_application", "execute_workflow": true,
               "config_overrides": {"commands": {"build": "true", "test": "true"}}}),
    )
    .await;
    assert_eq!(v["workflow_executed"], true);
    assert_eq!(v["workflow_name"], "build-and-test");
    assert!(v["run_id"].is_string());
    let run = finish(&c, &v["run_id"]).await;
    assert_eq!(run["status"], "succeeded", "{}", run["steps"]);
}

#[tokio::test]
async fn the_data_and_analysis_workflows_run_for_their_templates() {
    let env = Env::new();
    let c = env
        .stdio_config(Era::Legacy, "[modules.shell]\nenabled = true\n")
        .await;
    let v = ok(
        &c,
        "create_project",
        json!({"name": "pipe", "template": "data_pipeline"}),
    )
    .await;
    let dir = PathBuf::from(v["project_path"].as_str().unwrap());
    std::fs::write(dir.join("data/raw/a.csv"), "x,y\n1,2\n").unwrap();
    std::fs::write(dir.join("data/raw/b.csv"), "x,y\n3,4\n").unwrap();
    let run = ok(
        &c,
        "execute_workflow",
        json!({"workflow_name": "data-processing", "project": "pipe", "wait_seconds": 30}),
    )
    .await;
    assert_eq!(run["status"], "succeeded", "{}", run["steps"]);
    assert_eq!(
        std::fs::read_to_string(dir.join("data/processed/b.csv")).unwrap(),
        "x,y\n3,4\n"
    );
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("data/output/manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["project"], "pipe");
    let processed: Vec<&str> = manifest["processed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    assert!(
        processed.contains(&"a.csv") && processed.contains(&"b.csv"),
        "{manifest}"
    );
    let run = ok(
        &c,
        "execute_workflow",
        json!({"workflow_name": "visualization", "project": "pipe", "wait_seconds": 30}),
    )
    .await;
    assert_eq!(run["status"], "succeeded", "{}", run["steps"]);
    let report = std::fs::read_to_string(dir.join("data/output/visualization.md")).unwrap();
    assert!(
        report.contains("manifest.json") && report.contains("heatmap"),
        "{report}"
    );

    // ai-analysis hands the analysis to an agent and writes its answer.
    let v = ok(
        &c,
        "create_project",
        json!({"name": "code", "template": "ai_analysis"}),
    )
    .await;
    let dir = PathBuf::from(v["project_path"].as_str().unwrap());
    std::fs::write(dir.join("src/main.py"), "print('hi')\nprint('there')\n").unwrap();
    let run = start_for(&c, "ai-analysis", "code").await;
    wait_for_step(&c, &run["run_id"], "review", "waiting_agent").await;
    let claim = ok(&c, "next_task", json!({"tags": ["analysis"]})).await;
    let input = &claim["task"]["parameters"];
    assert_eq!(input["project_path"], json!(dir.to_str().unwrap()));
    // src/ holds main.py plus its generated README.md and AGENTS.md.
    assert!(
        input["measure"].as_str().unwrap().starts_with("3\n"),
        "{input}"
    );
    ok(
        &c,
        "complete_task",
        json!({"task_id": claim["task"]["task_id"], "lease_id": claim["lease_id"],
        "result": {"summary": "Small and tidy.", "findings": ["two prints"]}}),
    )
    .await;
    let done = finish(&c, &run["run_id"]).await;
    assert_eq!(done["status"], "succeeded", "{}", done["steps"]);
    let report = std::fs::read_to_string(dir.join("reports/analysis.md")).unwrap();
    assert!(
        report.contains("Small and tidy.") && report.contains("two prints"),
        "{report}"
    );
}

async fn start_for(c: &Client, workflow: &str, project: &str) -> Value {
    ok(
        c,
        "execute_workflow",
        json!({"workflow_name": workflow, "project": project, "wait_seconds": 0}),
    )
    .await
}
