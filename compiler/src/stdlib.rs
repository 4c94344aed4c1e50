//! The standard library: the optimizer rules shipped with optc, written in the language itself
//! and embedded in the binary, so every test run compiles them all.

/// Every stdlib rule: `(name, source)`.
pub const RULES: &[(&str, &str)] = &[
    ("sgd", include_str!("../../stdlib/sgd.opt")),
    ("adagrad", include_str!("../../stdlib/adagrad.opt")),
    ("rmsprop", include_str!("../../stdlib/rmsprop.opt")),
    ("adadelta", include_str!("../../stdlib/adadelta.opt")),
    ("adam", include_str!("../../stdlib/adam.opt")),
    ("adamw", include_str!("../../stdlib/adamw.opt")),
    ("adamax", include_str!("../../stdlib/adamax.opt")),
    ("nadam", include_str!("../../stdlib/nadam.opt")),
    ("radam", include_str!("../../stdlib/radam.opt")),
    ("adabelief", include_str!("../../stdlib/adabelief.opt")),
    ("adabound", include_str!("../../stdlib/adabound.opt")),
    ("lion", include_str!("../../stdlib/lion.opt")),
    ("adamsgd", include_str!("../../stdlib/adamsgd.opt")),
    // With reductions: kernels of several stages.
    ("lamb", include_str!("../../stdlib/lamb.opt")),
    ("stableadamw", include_str!("../../stdlib/stableadamw.opt")),
    ("lars", include_str!("../../stdlib/lars.opt")),
    ("adafactor", include_str!("../../stdlib/adafactor.opt")),
    // With matrix stages: products between the per-element passes.
    ("muon", include_str!("../../stdlib/muon.opt")),
];

/// The source of stdlib rule `name`.
pub fn source(name: &str) -> Option<&'static str> {
    RULES.iter().find(|(n, _)| *n == name).map(|(_, s)| *s)
}

/// The names of the stdlib rules.
pub fn names() -> impl Iterator<Item = &'static str> {
    RULES.iter().map(|(n, _)| *n)
}

/// Parses and checks stdlib rule `name` (reported as `stdlib/NAME.opt`).
pub fn rule(name: &str) -> Option<Result<crate::Rule, crate::Diagnostics>> {
    source(name).map(|s| crate::Rule::parse(&format!("stdlib/{name}.opt"), s))
}
