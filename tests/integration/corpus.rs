//! The 322 real Stripe capability files, all together.

use capgate::compile::FileKind;
use capgate::diag::Severity;

use crate::common;

#[test]
fn every_corpus_file_loads_without_errors() {
    let summary = capgate::validate::validate(&[common::corpus()]);
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
