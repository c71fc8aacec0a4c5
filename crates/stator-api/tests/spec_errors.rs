//! Regressions found by fuzzing the spec parser (`fuzz/`, target `spec`): every error is
//! one line, as the CLI prints it.

use stator_api::spec::{parse_node_pool, parse_spec, SpecFormat};

#[test]
fn a_key_holding_line_breaks_still_gives_a_one_line_error() {
    let cases = [
        // The fuzzer's input: a YAML flow mapping whose key holds carriage returns.
        ("{ate\r\r\raa", SpecFormat::Yaml),
        ("\"a\\nb\": 1\n", SpecFormat::Yaml),
        (r#"{"name": "x", "a\nb": 1}"#, SpecFormat::Json),
        ("\"a\\nb\" = 1\n", SpecFormat::Toml),
    ];
    for (text, format) in cases {
        let error = parse_spec(text, format).unwrap_err().to_string();
        assert!(
            !error.contains(['\n', '\r']),
            "{format:?} {text:?}: {error:?}"
        );
        let error = parse_node_pool(text, format).unwrap_err().to_string();
        assert!(
            !error.contains(['\n', '\r']),
            "{format:?} {text:?}: {error:?}"
        );
    }
}
