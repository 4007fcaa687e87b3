//! Property tests over SQL text as clients send it: splitting, placeholder rewriting,
//! classification and `EXPLAIN` detection never panic, finish in time linear in the input, and
//! keep their invariants.

use proptest::prelude::*;

use super::*;

/// Words and marks that steer the classifier: keywords it looks for, comment and quote
/// openers, placeholders, separators.
const PIECES: &[&str] = &[
    "SELECT",
    "EXPLAIN",
    "ANALYZE",
    "VERBOSE",
    "COPY",
    "TO",
    "USE",
    "HIVE",
    "BOX",
    "DESCRIBE",
    "SHOW",
    "CREATE",
    "OR",
    "REPLACE",
    "TABLE",
    "DROP",
    "INSERT",
    "INTO",
    "PARTITIONED",
    "CLUSTER",
    "NONE",
    "BY",
    "/*",
    "*/",
    "--",
    "\n",
    "'",
    "\"",
    "`",
    "?",
    "??",
    "$1",
    "$",
    ";",
    "(",
    ")",
    ",",
    ".",
    " ",
    "t",
    "a.b.c",
    "1",
    "e'\\\\'",
    "$$",
    "[",
    "]",
    "\u{0}",
    "é",
    "🐝",
];

fn sql_like() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::collection::vec(proptest::sample::select(PIECES), 0..40)
            .prop_map(|v| v.join(" ")),
        proptest::collection::vec(proptest::sample::select(PIECES), 0..40).prop_map(|v| v.concat()),
        ".{0,200}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn classifying_any_text_answers(text in sql_like()) {
        let _ = split_statements(&text, 100_000);
        let _ = classify(&text);
        let _ = explained(&text);
        let _ = is_explain(&text);
        let _ = crate::engine::parse(&text);
    }

    #[test]
    fn rewriting_placeholders_is_idempotent(text in sql_like()) {
        if let Ok((once, n)) = rewrite_placeholders(&text) {
            let (twice, m) = rewrite_placeholders(&once).expect("rewritten text lexes");
            prop_assert_eq!(&twice, &once);
            prop_assert_eq!(m, n);
        }
    }

    #[test]
    fn explain_analyze_is_never_taken_for_a_plain_explain(
        before in proptest::sample::select(&["", " ", "/* c */", "-- c\n", "\n\t"][..]),
        between in proptest::sample::select(&[" ", "/**/", " /* a */ ", "\n-- c\n", "  "][..]),
        verbose in any::<bool>(),
    ) {
        let text = format!(
            "{before}EXPLAIN{between}{}ANALYZE SELECT 1",
            if verbose { format!("VERBOSE{between}") } else { String::new() }
        );
        prop_assert!(is_explain(&text));
        prop_assert_eq!(explained(&text), None, "{}", text);
    }
}
