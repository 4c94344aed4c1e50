//! Checks that a PTX module's entry lists fit the kernel the runtime will run, before anything is
//! loaded or launched: data against data ([`optc_kernel::abi::check`]), no PTX text is read.
//!
//! An artifact is code, to be trusted like a shared library; this check catches the honest
//! mistakes: PTX from another rule, flag set or format, or a hand-edited kernel description, any of
//! which would otherwise make a launch pass arguments the entry does not take.

use super::error::CudaError;
use optc_kernel::artifact::PtxModule;
use optc_kernel::Kernel;

/// Errors unless every stage's entries in `ptx` take exactly what the runtime passes for
/// `kernel`.
pub(crate) fn check(kernel: &Kernel, ptx: &PtxModule) -> Result<(), CudaError> {
    optc_kernel::abi::check(kernel, ptx).map_err(|reason| CudaError::PtxMismatch {
        rule: kernel.rule.clone(),
        reason,
    })
}

#[cfg(all(test, feature = "compiler"))]
mod tests {
    use super::*;

    fn ptx_of(rule: &str, flags: &[(&str, bool)]) -> (Kernel, PtxModule) {
        let k = optc_compiler::stdlib::rule(rule)
            .and_then(Result::ok)
            .and_then(|r| r.specialize(flags).ok())
            .unwrap_or_else(|| panic!("{rule}"));
        let ptx = optc_compiler::backend::ptx::emit(&k, &Default::default())
            .unwrap_or_else(|e| panic!("{e}"));
        (k, ptx)
    }

    #[test]
    fn optc_ptx_fits_its_kernel() {
        use optc_compiler::CompileOptions;
        use optc_kernel::RankClass;
        for name in optc_compiler::stdlib::names() {
            let rule = optc_compiler::stdlib::rule(name)
                .and_then(Result::ok)
                .unwrap_or_else(|| panic!("{name}"));
            // A rule that reads `matrix` has one kernel per rank class.
            let ranks = if rule.uses_rank() {
                vec![RankClass::Matrix, RankClass::Vector]
            } else {
                vec![RankClass::Any]
            };
            for rank in ranks {
                let options = CompileOptions {
                    clip: false,
                    rank,
                    ..Default::default()
                };
                let k = rule
                    .specialize_with(&[], &options)
                    .unwrap_or_else(|e| panic!("{name}: {e}"));
                // Factored kernels included: their rows/cols entry lists.
                let ptx = optc_compiler::backend::ptx::emit(&k, &Default::default())
                    .unwrap_or_else(|e| panic!("{e}"));
                check(&k, &ptx).unwrap_or_else(|e| panic!("{name} {rank:?}: {e}"));
            }
        }
    }

    #[test]
    fn ptx_of_another_flag_set_or_rule_is_refused() {
        let (k, _) = ptx_of("adam", &[]);
        let (_, amsgrad) = ptx_of("adam", &[("amsgrad", true)]);
        let (_, sgd) = ptx_of("sgd", &[]);
        for other in [amsgrad, sgd] {
            let err = check(&k, &other)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains("does not fit rule `adam`"), "{err}");
        }
    }
}
