//! PTX text assembly: virtual-register allocation and instruction lines.
//!
//! Registers are PTX virtual registers (`%f7`, `%p2`, `%rd3`, `%r1`); ptxas does the real
//! allocation. Each entry gets its own [`Asm`], whose counters give the `.reg` declarations.

use std::fmt::Write as _;

/// The register classes an entry declares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Class {
    /// `.f32`, named `%f`.
    F32,
    /// `.pred`, named `%p`.
    Pred,
    /// `.b32`, named `%r`.
    B32,
    /// `.b64`, named `%rd`.
    B64,
    /// `.b16`, named `%rs` (bf16 and f16 values).
    B16,
}

impl Class {
    fn prefix(self) -> &'static str {
        match self {
            Class::F32 => "%f",
            Class::Pred => "%p",
            Class::B32 => "%r",
            Class::B64 => "%rd",
            Class::B16 => "%rs",
        }
    }
    fn decl(self) -> &'static str {
        match self {
            Class::F32 => ".f32",
            Class::Pred => ".pred",
            Class::B32 => ".b32",
            Class::B64 => ".b64",
            Class::B16 => ".b16",
        }
    }
}

/// A virtual register, printed as its PTX name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Reg(String);

impl Reg {
    /// The register's name.
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Reg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

const CLASSES: [Class; 5] = [Class::Pred, Class::F32, Class::B32, Class::B64, Class::B16];

/// The body of one entry being written: its instructions and its register counters.
#[derive(Default)]
pub(crate) struct Asm {
    text: String,
    counts: [usize; 5],
    labels: usize,
}

impl Asm {
    /// A fresh register of `class`.
    pub(crate) fn reg(&mut self, class: Class) -> Reg {
        let slot = CLASSES.iter().position(|c| *c == class).unwrap_or(0);
        self.counts[slot] += 1;
        Reg(format!("{}{}", class.prefix(), self.counts[slot]))
    }

    /// A fresh f32 register.
    pub(crate) fn f(&mut self) -> Reg {
        self.reg(Class::F32)
    }

    /// A fresh predicate register.
    pub(crate) fn p(&mut self) -> Reg {
        self.reg(Class::Pred)
    }

    /// A fresh 64-bit register.
    pub(crate) fn rd(&mut self) -> Reg {
        self.reg(Class::B64)
    }

    /// A fresh 32-bit register.
    pub(crate) fn r(&mut self) -> Reg {
        self.reg(Class::B32)
    }

    /// A fresh 16-bit register.
    pub(crate) fn h(&mut self) -> Reg {
        self.reg(Class::B16)
    }

    /// A label unique within the entry, spelled `$L_<what>_<n>`.
    pub(crate) fn label(&mut self, what: &str) -> String {
        self.labels += 1;
        format!("$L_{what}_{}", self.labels)
    }

    /// Appends one instruction (without the trailing `;`).
    pub(crate) fn ins(&mut self, line: impl AsRef<str>) {
        let _ = writeln!(self.text, "\t{};", line.as_ref());
    }

    /// Closes a counted loop: `i += step`, then back to `body` while `i < end` (unsigned), `p`
    /// the predicate it sets.
    pub(crate) fn loop_back(
        &mut self,
        i: &Reg,
        step: impl std::fmt::Display,
        end: &Reg,
        p: &Reg,
        body: &str,
    ) {
        self.ins(format!("add.s64 {i}, {i}, {step}"));
        self.ins(format!("setp.lt.u64 {p}, {i}, {end}"));
        self.ins(format!("@{p} bra {body}"));
    }

    /// Places a label.
    pub(crate) fn place(&mut self, label: &str) {
        let _ = writeln!(self.text, "{label}:");
    }

    /// Appends a comment line.
    pub(crate) fn comment(&mut self, text: impl AsRef<str>) {
        let _ = writeln!(self.text, "\t// {}", text.as_ref());
    }

    /// The `.reg` declarations followed by the instructions.
    pub(crate) fn finish(self) -> String {
        let mut out = String::new();
        for (class, count) in CLASSES.iter().zip(self.counts) {
            if count > 0 {
                let _ = writeln!(
                    out,
                    "\t.reg {} {}<{}>;",
                    class.decl(),
                    class.prefix(),
                    count + 1
                );
            }
        }
        out.push('\n');
        out.push_str(&self.text);
        out
    }
}

/// An f32 immediate in PTX's exact hex form (`0f3F800000` is 1.0), rounding `x` to nearest f32.
pub(crate) fn f32_imm(x: f64) -> String {
    format!("0f{:08X}", (x as f32).to_bits())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn immediates_are_exact_bits() {
        assert_eq!(f32_imm(1.0), "0f3F800000");
        assert_eq!(f32_imm(-0.0), "0f80000000");
        assert_eq!(f32_imm(f64::INFINITY), "0f7F800000");
    }

    #[test]
    fn declarations_cover_every_register() {
        let mut a = Asm::default();
        let f1 = a.f();
        let f2 = a.f();
        let p = a.p();
        a.ins(format!("add.rn.f32 {f1}, {f1}, {f2}"));
        a.ins(format!("setp.lt.f32 {p}, {f1}, {f2}"));
        let text = a.finish();
        assert!(text.contains(".reg .f32 %f<3>;"), "{text}");
        assert!(text.contains(".reg .pred %p<2>;"), "{text}");
        assert!(!text.contains(".b64"), "{text}");
    }
}
