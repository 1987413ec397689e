//! Data-driven spec fixtures: `tests/specs/ok/*.yaml` must compile without errors and serve what
//! their `.expected` file lists; `tests/specs/err/*.yaml` must produce the diagnostics their
//! `.expected` file lists. The format's own examples are checked the same way. Regenerate the
//! expectations with `UPDATE_EXPECT=1 cargo test -p capgate-model --test spec_files`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use capgate_model::compile::{self, CompiledFile, FileKind};
use capgate_model::diag::Severity;
use capgate_model::snapshot::{Action, Output, Snapshot};
use capgate_model::spec::{self, Env};

/// The repository root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The copies of the shared material under `tests/data`.
fn shared() -> PathBuf {
    root().join("tests/data")
}

fn corpus() -> PathBuf {
    shared().join("corpus/stripe-capabilities")
}

/// What a file serves and says, as stable text.
fn describe(files: &[PathBuf], strip: &Path) -> String {
    let env = Env::isolated(Default::default());
    let options = compile::Options::default();
    let compiled: Vec<Arc<CompiledFile>> = files
        .iter()
        .map(|f| Arc::new(compile::compile_file(&spec::load_file(f, &env), &options)))
        .collect();
    let (snapshot, collisions) = compile::assemble(&compiled, 1);
    let mut out = served(&snapshot);
    out.push_str("--- diagnostics\n");
    for file in &compiled {
        let extra = collisions.get(&file.path).cloned().unwrap_or_default();
        for diagnostic in file.diagnostics.iter().chain(&extra) {
            let text = diagnostic.to_string();
            let prefix = format!("{}/", strip.display());
            out.push_str(&text.replace(&prefix, ""));
        }
    }
    out
}

fn served(snapshot: &Snapshot) -> String {
    let mut out = String::new();
    for (key, listener) in &snapshot.listeners {
        let mut routes: Vec<String> = listener
            .rest
            .values()
            .into_iter()
            .map(|r| {
                format!(
                    "  {} {} -> {}",
                    r.method,
                    r.path,
                    action(&r.operation.action, &r.operation.output)
                )
            })
            .collect();
        routes.sort();
        if !routes.is_empty() {
            let _ = writeln!(out, "rest {key}");
            out.push_str(&routes.join("\n"));
            out.push('\n');
        }
        for (namespace, adapter) in &listener.mcp {
            let _ = writeln!(out, "mcp {key} /mcp/{namespace} \"{}\"", adapter.title);
            for tool in &adapter.tools {
                let _ = writeln!(
                    out,
                    "  tool {} -> {}\n    schema {}",
                    tool.name,
                    action(&tool.operation.action, &tool.operation.output),
                    serde_json::to_string(&*tool.input_schema).unwrap()
                );
            }
        }
    }
    out
}

fn action(action: &Action, output: &Output) -> String {
    let output = match output {
        Output::PassThrough => "pass-through",
        Output::Shape(_) => "mapped",
    };
    match action {
        Action::Call(call) => format!(
            "call {} {} {} ({output})",
            call.upstream.name, call.upstream.method, call.upstream.adapter.base_uri
        ),
        Action::Mock => format!("mock ({output})"),
        Action::Forward(forward) => format!("forward {}", forward.adapter.base_uri),
        Action::Unavailable { message } => format!("unavailable 503: {message}"),
    }
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| spec::is_yaml(p))
        .collect();
    files.sort();
    files
}

fn check(file: &Path, strip: &Path) -> String {
    let text = describe(&[file.to_path_buf()], strip);
    let expected = file.with_extension("expected");
    expect_test::expect_file![expected].assert_eq(&text);
    text
}

#[test]
fn ok_fixtures_compile_cleanly_and_serve_what_they_list() {
    let dir = root().join("tests/specs/ok");
    let files = yaml_files(&dir);
    assert!(!files.is_empty());
    for file in files {
        let text = check(&file, &dir);
        assert!(
            !text.contains("\nerror["),
            "{} has errors:\n{text}",
            file.display()
        );
    }
}

#[test]
fn err_fixtures_report_what_they_list() {
    let dir = root().join("tests/specs/err");
    let files = yaml_files(&dir);
    assert!(!files.is_empty());
    for file in files {
        let text = check(&file, &dir);
        assert!(
            text.contains("error["),
            "{} reports no error:\n{text}",
            file.display()
        );
    }
}

/// Every engine-tested example of the format is served, or refused part by part.
#[test]
fn naftiko_examples_are_served_or_refused_part_by_part() {
    let examples = shared().join("naftiko/examples");
    let out = root().join("tests/specs/examples");
    for folder in std::fs::read_dir(&examples)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
    {
        for file in yaml_files(&folder) {
            let text = describe(std::slice::from_ref(&file), &examples);
            let name = format!(
                "{}--{}.expected",
                folder.file_name().unwrap().to_string_lossy(),
                file.file_stem().unwrap().to_string_lossy()
            );
            expect_test::expect_file![out.join(name)].assert_eq(&text);
        }
    }
}

/// An example that serves nothing says why: every unserved part has an error.
#[test]
fn naftiko_examples_that_serve_nothing_say_why() {
    let examples = shared().join("naftiko/examples");
    let env = Env::isolated(Default::default());
    for folder in std::fs::read_dir(&examples)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
    {
        for file in yaml_files(&folder) {
            let compiled =
                compile::compile_file(&spec::load_file(&file, &env), &compile::Options::default());
            if compiled.kind != compile::FileKind::Capability || compiled.served_count() != (0, 0) {
                continue;
            }
            assert!(
                compiled
                    .diagnostics
                    .iter()
                    .any(|d| d.severity == Severity::Error),
                "{} serves nothing and reports no error",
                file.display()
            );
        }
    }
}

#[test]
fn every_corpus_file_loads_without_errors() {
    let summary = capgate_model::validate::validate(&[corpus()]);
    assert_eq!(summary.files.len(), 322);
    assert!(summary.files.iter().all(|f| f.kind == FileKind::Capability));
    let errors: Vec<String> = summary
        .files
        .iter()
        .flat_map(|f| &f.diagnostics)
        .filter(|d| d.severity == Severity::Error)
        .map(ToString::to_string)
        .collect();
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    println!(
        "{}",
        summary
            .render_text()
            .lines()
            .rev()
            .take(1)
            .collect::<String>()
    );
}

/// Every corpus REST route can fill its upstream path parameters from what the route takes:
/// no route is left answering 400 because its `with` spells a path variable another way
/// (`rest.payment_method` for `{payment-method}`, bound with a `name-mismatch` warning).
#[test]
fn no_corpus_route_is_unreachable_by_a_name_mismatch() {
    use capgate_model::route::Segment;
    use capgate_model::snapshot::{Location, RestInputs, Source};
    // With the key the corpus binds, so that its operations are served (not unavailable).
    let env = Env::isolated([("STRIPE_API_KEY".to_owned(), "sk_test_x".to_owned())].into());
    let options = compile::Options::default();
    let (mut routes, mut unreachable, mut rebound) = (0, Vec::new(), 0);
    for file in yaml_files(&corpus()) {
        let compiled = compile::compile_file(&spec::load_file(&file, &env), &options);
        rebound += compiled
            .diagnostics
            .iter()
            .filter(|d| d.code.to_string() == "name-mismatch")
            .count();
        for planned in &compiled.rest {
            let Action::Call(call) = &planned.route.operation.action else {
                continue;
            };
            routes += 1;
            let mut takes: Vec<&str> = planned
                .segments
                .iter()
                .filter_map(|s| match s {
                    Segment::Variable(v) | Segment::Rest(v) => Some(v.as_str()),
                    _ => None,
                })
                .collect();
            if let RestInputs::Declared { params, .. } = &planned.route.inputs {
                takes.extend(params.iter().map(|p| p.name.as_str()));
            }
            for param in call
                .upstream
                .params
                .iter()
                .filter(|p| p.location == Location::Path && p.value.is_none())
            {
                let input = match call.with.iter().find(|(name, _)| name == &param.name) {
                    Some((_, Source::Input(input))) => input.as_str(),
                    Some(_) => continue,
                    None => param.name.as_str(),
                };
                if !takes.contains(&input) {
                    unreachable.push(format!(
                        "{} {} {}: `{}` reads `{input}`, the route takes {takes:?}",
                        file.file_name().unwrap().to_string_lossy(),
                        planned.route.method,
                        planned.route.path,
                        param.name
                    ));
                }
            }
        }
    }
    println!("{routes} REST routes with upstream calls; {rebound} references bound across `-`/`_`");
    assert!(routes > 1500, "{routes}");
    assert!(
        unreachable.is_empty(),
        "{} unreachable:\n{}",
        unreachable.len(),
        unreachable.join("\n")
    );
    assert!(rebound > 0, "the corpus has renamed path variables");
}
