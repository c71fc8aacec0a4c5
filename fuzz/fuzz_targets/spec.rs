//! Service and node-pool specs: what `stator apply -f` and the API read, in TOML, YAML
//! and JSON (the first input byte picks the format, the rest is the text).
//!
//! Beyond "no panic": every error has a message, and a value error names its field
//! and what to write; a service spec that parses and validates survives a round trip
//! through JSON (what the API stores), YAML and TOML unchanged and still validates.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stator_api::spec::{parse_node_pool, parse_spec, SpecError, SpecFormat};

const FORMATS: [SpecFormat; 4] = [
    SpecFormat::Toml,
    SpecFormat::Yaml,
    SpecFormat::Json,
    SpecFormat::Auto,
];

fn check_error(error: &SpecError) {
    match error {
        SpecError::Parse { message, .. } => assert!(!message.is_empty(), "{error:?}"),
        SpecError::Invalid { field, reason } => {
            assert!(!field.is_empty() && !reason.is_empty(), "{error:?}")
        }
    }
    assert!(!error.to_string().contains('\n'), "not one line: {error}");
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, text)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let format = FORMATS[usize::from(selector) % FORMATS.len()];

    match parse_spec(text, format) {
        Err(error) => check_error(&error),
        Ok(spec) => match spec.validate() {
            Err(error) => check_error(&error),
            Ok(()) => {
                let json = serde_json::to_string(&spec).expect("a spec serialises to JSON");
                let from_json = parse_spec(&json, SpecFormat::Json)
                    .unwrap_or_else(|e| panic!("JSON {json} does not parse back: {e}"));
                assert_eq!(from_json, spec, "JSON round trip: {json}");
                assert_eq!(from_json.validate(), Ok(()));
                let yaml = serde_yaml_ng::to_string(&spec).expect("a spec serialises to YAML");
                let from_yaml = parse_spec(&yaml, SpecFormat::Yaml)
                    .unwrap_or_else(|e| panic!("YAML {yaml} does not parse back: {e}"));
                assert_eq!(from_yaml, spec, "YAML round trip: {yaml}");
                // Not every value has a TOML form (a table before a plain key); those
                // that do must come back unchanged.
                if let Ok(toml_text) = toml::to_string(&spec) {
                    let from_toml = parse_spec(&toml_text, SpecFormat::Toml)
                        .unwrap_or_else(|e| panic!("TOML {toml_text} does not parse back: {e}"));
                    assert_eq!(from_toml, spec, "TOML round trip: {toml_text}");
                }
            }
        },
    }
    if let Err(error) = parse_node_pool(text, format).and_then(|pool| pool.validate()) {
        check_error(&error);
    }
});
