//! Every stdlib rule parses, checks cleanly and compiles for every flag set; the optimized IR of
//! each is snapshotted (staged rules included), and no uniform work is left in any kernel body.

use optc_compiler::{stdlib, CompileOptions, RankClass, Rule};
use optc_kernel::{BinaryOp, Expr, Kernel};

fn rules() -> Vec<Rule> {
    stdlib::names()
        .map(|n| match stdlib::rule(n) {
            Some(Ok(r)) => r,
            Some(Err(d)) => panic!("stdlib rule {n} does not compile:\n{d}"),
            None => panic!("missing {n}"),
        })
        .collect()
}

#[test]
fn stdlib_is_clean() {
    for r in rules() {
        assert!(r.warnings().is_empty(), "{}:\n{}", r.name(), r.warnings());
        assert!(!r.doc().is_empty(), "{} has no doc comment", r.name());
    }
}

/// Whether any body node is uniform work: an op whose operands are all arguments or literals.
fn uniform_work_in_body(k: &Kernel) -> Vec<String> {
    let mut out = Vec::new();
    for (j, st) in k.stages.iter().enumerate() {
        let leafish = |h: optc_kernel::Handle<Expr>| {
            matches!(
                st.body[h],
                Expr::Uniform(_) | Expr::Const(_) | Expr::Bool(_)
            )
        };
        out.extend(
            st.body
                .iter()
                .filter(|(_, e)| {
                    let ops: Vec<_> = e.operands().collect();
                    !ops.is_empty() && ops.iter().all(|o| leafish(*o))
                })
                .map(|(h, e)| format!("stage {j}: %{} = {e:?}", h.index())),
        );
    }
    out
}

/// Every kernel of a rule: one per flag set, and per rank class for rules that read `matrix`.
fn kernels(r: &Rule) -> Vec<(Vec<bool>, Kernel)> {
    let ranks: &[RankClass] = if r.uses_rank() {
        &[RankClass::Matrix, RankClass::Vector]
    } else {
        &[RankClass::Any]
    };
    let mut out = Vec::new();
    for flags in r.flag_sets() {
        for &rank in ranks {
            let options = CompileOptions {
                clip: false,
                rank,
                ..Default::default()
            };
            let k = r
                .specialize_values_with(&flags, &options)
                .unwrap_or_else(|e| panic!("{e}"));
            out.push((flags.clone(), k));
        }
    }
    out
}

#[test]
fn no_uniform_work_or_pow_in_any_body() {
    for r in rules() {
        for (flags, k) in kernels(&r) {
            let bad = uniform_work_in_body(&k);
            assert!(
                bad.is_empty(),
                "{} {:?}: uniform work in body: {bad:?}\n{k}",
                r.name(),
                flags
            );
            let pow = k.stages.iter().any(|st| {
                st.body
                    .iter()
                    .any(|(_, e)| matches!(e, Expr::Binary(BinaryOp::Pow, ..)))
            });
            assert!(!pow, "{} {:?} has a per-element pow\n{k}", r.name(), flags);
        }
    }
}

#[test]
fn optimized_ir_snapshots() {
    for r in rules() {
        // One snapshot per flag set whose kernel differs from the defaults' kernel.
        let mut seen: Vec<String> = Vec::new();
        for (flags, k) in kernels(&r) {
            let text = k.to_string();
            let body = text.split("\n").skip(1).collect::<Vec<_>>().join("\n");
            if seen.contains(&body) {
                continue;
            }
            seen.push(body);
            let tag: Vec<String> = r
                .flags()
                .iter()
                .zip(&flags)
                .filter(|(_, v)| **v)
                .map(|(f, _)| f.name.clone())
                .collect();
            let rank = match k.rank {
                RankClass::Any => "",
                RankClass::Matrix => "@matrix",
                RankClass::Vector => "@vector",
            };
            let name = if tag.is_empty() {
                format!("{}{rank}", r.name())
            } else {
                format!("{}+{}{rank}", r.name(), tag.join("+"))
            };
            insta::assert_snapshot!(name, text);
        }
    }
}
