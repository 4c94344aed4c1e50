//! Structure of the emitted PTX: one load per read buffer and one store per written buffer per
//! element, IEEE rounding by default, boolean uniforms turned into predicates once, option
//! checking, and a snapshot of the AdamW module.

mod ptx_kernels;

use optc_compiler::backend::ptx::layout::TableLayout;
use optc_compiler::backend::ptx::{emit, entry_names, Error, Options};

/// The text of entry `name` (up to the next entry).
fn entry<'a>(source: &'a str, name: &str) -> &'a str {
    let start = source
        .find(&format!(".entry {name}("))
        .unwrap_or_else(|| panic!("no entry {name}"));
    let rest = &source[start..];
    let end = rest[1..]
        .find(".visible .entry")
        .map_or(rest.len(), |i| i + 1);
    &rest[..end]
}

fn count(text: &str, needle: &str) -> usize {
    text.matches(needle).count()
}

#[test]
fn adamw_loads_each_buffer_once_and_stores_each_written_buffer_once() {
    let k = ptx_kernels::adamw();
    let m = emit(&k, &Options::default()).expect("emit");
    let v4 = entry(&m.source, &m.stages[0].vector.name);
    // Vector loop: p, g, m, v loaded as v4; p, m, v stored as v4. Tail: the same, scalar.
    assert_eq!(count(v4, "ld.global.v4.f32"), 4);
    assert_eq!(count(v4, "st.global.v4.f32"), 3);
    assert_eq!(count(v4, "ld.global.f32"), 4);
    assert_eq!(count(v4, "st.global.f32"), 3);
    let scalar = entry(&m.source, &m.stages[0].scalar.name);
    assert_eq!(count(scalar, "ld.global.f32"), 4);
    assert_eq!(count(scalar, "st.global.f32"), 3);
    assert_eq!(count(scalar, ".v4."), 0);
    let multi = entry(&m.source, &m.stages[0].multi.name);
    assert_eq!(count(multi, "ld.global.v4.f32"), 4);
    assert_eq!(count(multi, "st.global.v4.f32"), 3);
    // 4 scalar element loads plus the 8 per-tensor uniforms read from the table record.
    assert_eq!(count(multi, "ld.global.f32"), 4 + 8);
    assert_eq!(count(multi, "st.global.f32"), 3);
    // Params of the single-tensor entries: 4 pointers, n, 8 uniforms.
    assert_eq!(count(v4, ".param .u64"), 5);
    assert_eq!(count(v4, ".param .f32"), 8);
}

#[test]
fn default_rounding_is_ieee_and_fast_math_is_opt_in() {
    for k in ptx_kernels::all() {
        let m = emit(&k, &Options::default()).expect("emit");
        for line in m.source.lines().map(str::trim) {
            let op = line.split_whitespace().next().unwrap_or("");
            let arith = ["add.", "sub.", "mul.", "div.", "sqrt.", "fma.", "rcp."]
                .iter()
                .any(|p| op.starts_with(p));
            if arith && op.ends_with(".f32") {
                assert!(op.contains(".rn."), "{}: `{line}` is not .rn", k.rule);
            }
            if op.contains(".approx") {
                assert!(
                    op.starts_with("ex2.approx.f32") || op.starts_with("lg2.approx.f32"),
                    "{}: `{line}` is approximate without fast math",
                    k.rule
                );
            }
            assert!(
                !op.contains(".ftz"),
                "{}: `{line}` flushes subnormals",
                k.rule
            );
        }
    }
    let fast = Options {
        fast_math: true,
        ..Options::default()
    };
    let m = emit(&ptx_kernels::adamw(), &fast).expect("emit");
    assert!(m.source.contains("sqrt.approx.ftz.f32"));
    assert!(m.source.contains("div.full.ftz.f32"));
    assert!(!m.source.contains("div.rn"));
    assert!(m.source.contains("fast math"));
}

#[test]
fn boolean_uniforms_become_predicates_once_before_the_loop() {
    let k = ptx_kernels::sgd_selects();
    let m = emit(&k, &Options::default()).expect("emit");
    let v4 = entry(&m.source, &m.stages[0].vector.name);
    let loop_start = v4.find("$L_vec_body").expect("loop label");
    let (prologue, rest) = v4.split_at(loop_start);
    // maximize, first step and nesterov: one `setp.ne` each, all before the loop.
    assert_eq!(count(prologue, "setp.ne.f32"), 3, "{prologue}");
    assert_eq!(count(rest, "setp.ne.f32"), 0);
    // Three selects per element: 4 lanes + 1 tail.
    assert_eq!(count(rest, "selp.f32"), 3 * 5);
}

#[test]
fn min_max_sign_and_pow_lowerings() {
    let m = emit(&ptx_kernels::lion_minmax_sign(), &Options::default()).expect("emit");
    assert!(m.source.contains("max.NaN.f32") && m.source.contains("min.NaN.f32"));
    assert!(m.source.contains("copysign.f32"));
    let m70 = emit(
        &ptx_kernels::lion_minmax_sign(),
        &Options {
            target: "sm_75".into(),
            version: "7.5".into(),
            fast_math: false,
        },
    )
    .expect("emit");
    assert!(!m70.source.contains(".NaN"), "sm_75 has no min/max.NaN");
    assert!(m70.source.contains("setp.nan.f32"));
    let p = emit(&ptx_kernels::exp_log_pow(), &Options::default()).expect("emit");
    let scalar = entry(&p.source, &p.stages[0].scalar.name);
    // g^2 and g^-3 are multiplications (g^-3 then a division); |g|^power is the general pow.
    assert_eq!(
        count(scalar, "lg2.approx.f32"),
        2,
        "log and the general pow"
    );
    assert_eq!(
        count(scalar, "ex2.approx.f32"),
        2,
        "exp and the general pow"
    );
    assert_eq!(count(scalar, "div.rn.f32"), 2, "g^-3 and t3 / g^-3");
}

#[test]
fn options_are_checked() {
    let k = ptx_kernels::adamw();
    let with = |version: &str, target: &str| Options {
        version: version.into(),
        target: target.into(),
        fast_math: false,
    };
    assert!(matches!(
        emit(&k, &with("8.0", "sm_50")),
        Err(Error::Target(_))
    ));
    assert!(matches!(
        emit(&k, &with("8.0", "compute_80")),
        Err(Error::Target(_))
    ));
    assert!(matches!(
        emit(&k, &with("eight", "sm_80")),
        Err(Error::Version { .. })
    ));
    let old = emit(&k, &with("7.5", "sm_90")).expect_err("sm_90 needs 7.8");
    assert!(old.to_string().contains("sm_90 needs PTX 7.8"), "{old}");
    assert!(emit(&k, &with("8.5", "sm_90a")).is_ok());
    let mut broken = k.clone();
    let dup = broken.stages[0].stores[0];
    broken.stages[0].stores.push(dup);
    assert!(matches!(
        emit(&broken, &Options::default()),
        Err(Error::InvalidKernel(_))
    ));
}

#[test]
fn entry_names_are_identifiers_and_the_header_states_the_abi() {
    let k = ptx_kernels::slow_weights();
    let (v, s, mt) = entry_names(&k, 0);
    assert_eq!(
        (v.as_str(), s.as_str(), mt.as_str()),
        (
            "optc_slow_weights_s0_v4",
            "optc_slow_weights_s0_scalar",
            "optc_slow_weights_s0_multi"
        )
    );
    let m = emit(&k, &Options::default()).expect("emit");
    assert!(m
        .source
        .contains("Buffers (.u64, in order): p, g, slow; then n (.u64);"));
    assert!(m.source.contains("Stage 0: 1 uniforms, 0 reduce outputs"));
    let stride = TableLayout::of(&k).stride();
    assert_eq!(
        stride,
        8 * 3 + 16 + 8,
        "3 pointers, n, flags, 1 uniform padded to 8"
    );
    assert!(m.source.contains(&format!("table record {stride} bytes")));
    // p is read but not written: no store to it.
    let scalar = entry(&m.source, &m.stages[0].scalar.name);
    assert_eq!(count(scalar, "st.global.f32"), 1);
    assert_eq!(count(scalar, "ld.global.f32"), 2);
}

#[test]
fn adamw_ptx_snapshot() {
    let m = emit(&ptx_kernels::adamw(), &Options::default()).expect("emit");
    insta::assert_snapshot!(m.source);
}

/// Whether a stdlib rule compiles to a staged kernel (several stages, or one per rank class):
/// those are snapshotted by `staged_ptx_snapshots`, the others by `stdlib_ptx_snapshots`.
fn is_staged(rule: &optc_compiler::Rule) -> bool {
    rule.uses_rank() || rule.specialize(&[]).is_ok_and(|k| k.stages.len() > 1)
}

#[test]
fn stdlib_ptx_snapshots() {
    for name in optc_compiler::stdlib::names() {
        let rule = match optc_compiler::stdlib::rule(name) {
            Some(Ok(rule)) => rule,
            other => panic!("stdlib rule {name}: {other:?}"),
        };
        if is_staged(&rule) {
            continue;
        }
        let kernel = rule
            .specialize(&[])
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let m = emit(&kernel, &Options::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
        insta::assert_snapshot!(format!("stdlib_{name}"), m.source);
    }
}

/// The staged stdlib rules (every rank class) and AdamW clipped by the global norm.
#[test]
fn staged_ptx_snapshots() {
    use optc_compiler::passes::CompileOptions;
    use optc_kernel::RankClass;
    let mut cases: Vec<(String, &str, CompileOptions)> = Vec::new();
    for name in optc_compiler::stdlib::names() {
        let rule = match optc_compiler::stdlib::rule(name) {
            Some(Ok(rule)) => rule,
            other => panic!("stdlib rule {name}: {other:?}"),
        };
        if !is_staged(&rule) {
            continue;
        }
        if rule.uses_rank() {
            for rank in [RankClass::Matrix, RankClass::Vector] {
                let tag = format!("{name}_{rank:?}").to_lowercase();
                let options = CompileOptions {
                    clip: false,
                    rank,
                    ..Default::default()
                };
                cases.push((tag, name, options));
            }
        } else {
            cases.push((name.to_string(), name, CompileOptions::default()));
        }
    }
    let clip = CompileOptions {
        clip: true,
        ..CompileOptions::default()
    };
    cases.push(("adamw_clip".into(), "adamw", clip));
    for (tag, name, options) in cases {
        let rule = optc_compiler::stdlib::rule(name)
            .and_then(Result::ok)
            .unwrap_or_else(|| panic!("{name}"));
        let kernel = rule
            .specialize_with(&[], &options)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        // A factored kernel (adafactor's matrix kernel) gets rows/cols entries per stage and no
        // elementwise ones.
        if kernel.is_factored() {
            let m = emit(&kernel, &Options::default()).unwrap_or_else(|e| panic!("{tag}: {e}"));
            assert!(m.stages.is_empty(), "{tag}");
            assert_eq!(m.factored.len(), kernel.stages.len(), "{tag}");
        }
        let m = emit(&kernel, &Options::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
        optc_kernel::abi::check(&kernel, &m).unwrap_or_else(|e| panic!("{name}: {e}"));
        insta::assert_snapshot!(format!("staged_{tag}"), m.source);
    }
}

/// The stochastic-rounding ABI (`docs/cuda.md`): with `--stochastic-rounding`, every
/// single-tensor, `_q8` and factored entry ends with `Param::SrKey` (a `.param .u32`), the
/// multi-tensor record has its `sr_key` field in the flags' padding, the artifact round-trips, and
/// `abi::check` refuses lists without the key; without stochastic rounding there is none.
#[test]
fn stochastic_rounding_entries_take_the_key_last() {
    use optc_compiler::passes::CompileOptions;
    use optc_kernel::abi::{check, Param};
    use optc_kernel::{Artifact, Dtype, Precision, RankClass};
    let rule = |name: &str| {
        optc_compiler::stdlib::rule(name)
            .and_then(Result::ok)
            .expect("a stdlib rule")
    };
    let sr = Precision {
        param: Dtype::Bf16,
        state: Dtype::Int8,
        stochastic_rounding: Some(1),
        ..Precision::default()
    };
    let lamb = rule("lamb").specialize(&[]).expect("lamb");
    let k = sr.apply(&lamb).expect("applies");
    let m = emit(&k, &Options::default()).expect("emit");
    for st in &m.stages {
        let q8 = st.int8.as_ref().expect("an int8 entry");
        for e in [&st.vector, &st.scalar, q8] {
            assert_eq!(e.params.last(), Some(&Param::SrKey), "{}", e.name);
            assert!(
                entry(&m.source, &e.name).contains(&format!(".param .u32 {}_sr_key", e.name)),
                "{}",
                e.name
            );
        }
        assert_eq!(st.record.sr_key, Some(st.record.flags + 4));
        assert_eq!(
            st.record.stride,
            TableLayout::new(
                k.buffers().len(),
                st.record.partials.is_some(),
                st.record.uniforms.len()
            )
            .stride
        );
    }
    check(&k, &m).expect("the lists fit");
    let text = Artifact::new(k.clone(), Some(m.clone()))
        .to_json()
        .expect("json");
    assert!(text.contains("\"sr_key\""));
    Artifact::from_json(&text).expect("reads back");
    let mut bad = m.clone();
    bad.stages[0].vector.params.pop();
    assert!(check(&k, &bad).is_err(), "a vector entry without the key");
    let mut bad = m.clone();
    if let Some(q) = &mut bad.stages[0].int8 {
        q.params.pop();
    }
    assert!(check(&k, &bad).is_err(), "a _q8 entry without the key");
    let mut bad = m.clone();
    bad.stages[0].record.sr_key = None;
    assert!(check(&k, &bad).is_err(), "a record without the key");
    let mut bad = m;
    bad.stages[0].int8 = None;
    assert!(check(&k, &bad).is_err(), "no _q8 entry for int8 states");

    // A factored kernel's rows and cols entries.
    let ada = rule("adafactor")
        .specialize_with(
            &[],
            &CompileOptions {
                clip: false,
                loss_scale: false,
                rank: RankClass::Matrix,
            },
        )
        .expect("adafactor");
    let k = Precision {
        param: Dtype::F16,
        stochastic_rounding: Some(2),
        ..Precision::default()
    }
    .apply(&ada)
    .expect("applies");
    let m = emit(&k, &Options::default()).expect("emit");
    assert!(!m.factored.is_empty());
    for f in &m.factored {
        for e in std::iter::once(&f.rows).chain(f.cols.as_ref()) {
            assert_eq!(e.params.last(), Some(&Param::SrKey), "{}", e.name);
        }
    }
    check(&k, &m).expect("the lists fit");

    // Without stochastic rounding: no key anywhere.
    let k = Precision {
        param: Dtype::Bf16,
        ..Precision::default()
    }
    .apply(&lamb)
    .expect("applies");
    let m = emit(&k, &Options::default()).expect("emit");
    assert!(m
        .stages
        .iter()
        .all(|st| st.record.sr_key.is_none() && !st.vector.params.contains(&Param::SrKey)));
    assert!(!m.source.contains("sr_key"));
}
