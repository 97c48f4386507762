//! The layers' arrows point one way (docs/architecture.md): every `crate::`
//! path in a layer's files names that layer or one below it. Reads the
//! sources; a module added in the wrong direction fails here.

use std::collections::BTreeMap;
use std::path::Path;

/// What each top-level module may use (besides itself).
fn allowed(layer: &str) -> Option<&'static [&'static str]> {
    Some(match layer {
        "error" => &["config"],
        "config" => &[],
        "telemetry" => &["config", "error"],
        "model" => &["error", "config"],
        "store" => &["model", "error", "config"],
        "actions" => &["model", "error", "config"],
        "engine" => &["store", "actions", "model", "error", "config"],
        "server" => &["engine", "model", "error", "config"],
        "commands" => &["engine", "model", "error", "config"],
        _ => return None,
    })
}

/// The layer of a source file (`src/<layer>/...` or `src/<layer>.rs`).
fn layer_of(rel: &Path) -> Option<String> {
    let first = rel.components().next()?.as_os_str().to_str()?;
    Some(first.trim_end_matches(".rs").to_string())
}

/// The upward (or sideways) `crate::` paths in `text`, a file of `layer`.
fn violations(layer: &str, text: &str) -> Vec<String> {
    let Some(ok) = allowed(layer) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let code = line.trim_start();
        if code.starts_with("//") {
            continue;
        }
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            let after = &rest[i + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() && name != layer && !ok.contains(&name.as_str()) {
                out.push(format!("line {}: {layer} uses crate::{name}", n + 1));
            }
            rest = after;
        }
    }
    out
}

#[test]
fn the_arrows_point_one_way() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut bad: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut seen = 0;
    let mut stack = vec![src.clone()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            if p.extension().is_none_or(|x| x != "rs") {
                continue;
            }
            let rel = p.strip_prefix(&src).unwrap();
            let Some(layer) = layer_of(rel) else { continue };
            if matches!(layer.as_str(), "main" | "lib") {
                continue;
            }
            assert!(
                allowed(&layer).is_some(),
                "{}: a new top-level module; give it a place in the layers (here and in docs/architecture.md)",
                rel.display()
            );
            seen += 1;
            let v = violations(&layer, &std::fs::read_to_string(&p).unwrap());
            if !v.is_empty() {
                bad.insert(rel.display().to_string(), v);
            }
        }
    }
    assert!(seen > 50, "the sources were read ({seen} files)");
    assert!(bad.is_empty(), "imports against the layers: {bad:#?}");
}

#[test]
fn an_upward_import_is_caught() {
    // The store reaching into the engine, as it once did for the clock.
    let v = violations(
        "store",
        "use crate::model::now_ms;\nfn f() { crate::engine::now_ms(); }\n",
    );
    assert_eq!(v, ["line 2: store uses crate::engine"]);
    // The server around the engine to the store.
    assert_eq!(violations("server", "use crate::store::Store;").len(), 1);
    // Comments do not count; the layer itself and those below do not either.
    assert!(
        violations(
            "engine",
            "// crate::server\nuse crate::store::X;\nuse crate::engine::Y;"
        )
        .is_empty()
    );
    assert!(violations("model", "use crate::actions::Registry;").len() == 1);
}
