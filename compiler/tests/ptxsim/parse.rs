//! PTX module text -> decoded instructions (the subset optc emits; anything else is an error
//! naming the instruction).

use std::collections::HashMap;

/// A PTX scalar type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ty {
    Pred,
    B8,
    B16,
    B32,
    B64,
    U8,
    U16,
    U32,
    U64,
    S8,
    S16,
    S32,
    S64,
    F16,
    Bf16,
    F32,
    F64,
}

impl Ty {
    fn from(s: &str) -> Option<Ty> {
        Some(match s {
            "pred" => Ty::Pred,
            "b8" => Ty::B8,
            "b16" => Ty::B16,
            "b32" => Ty::B32,
            "b64" => Ty::B64,
            "u8" => Ty::U8,
            "u16" => Ty::U16,
            "u32" => Ty::U32,
            "u64" => Ty::U64,
            "s8" => Ty::S8,
            "s16" => Ty::S16,
            "s32" => Ty::S32,
            "s64" => Ty::S64,
            "f16" => Ty::F16,
            "bf16" => Ty::Bf16,
            "f32" => Ty::F32,
            "f64" => Ty::F64,
            _ => return None,
        })
    }
    /// Size in bytes (a predicate counts as 0).
    pub fn bytes(self) -> usize {
        match self {
            Ty::Pred => 0,
            Ty::B8 | Ty::U8 | Ty::S8 => 1,
            Ty::B16 | Ty::U16 | Ty::S16 | Ty::F16 | Ty::Bf16 => 2,
            Ty::B32 | Ty::U32 | Ty::S32 | Ty::F32 => 4,
            Ty::B64 | Ty::U64 | Ty::S64 | Ty::F64 => 8,
        }
    }
    pub fn signed(self) -> bool {
        matches!(self, Ty::S8 | Ty::S16 | Ty::S32 | Ty::S64)
    }
    pub fn is_float(self) -> bool {
        matches!(self, Ty::F16 | Ty::Bf16 | Ty::F32 | Ty::F64)
    }
}

/// A special register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sreg {
    Tid,
    Ntid,
    Ctaid,
    Nctaid,
    Laneid,
    /// `.y`/`.z` of a 1-D launch: ids 0, sizes 1.
    Zero,
    One,
}

/// An operand.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Opnd {
    Reg(u16),
    Int(i64),
    /// An `0fXXXXXXXX` immediate (f32 bits) or `0dXXXXXXXXXXXXXXXX` (f64 bits).
    FBits(u64),
    Sreg(Sreg),
    /// The address of a `.shared` or `.const` symbol.
    Sym(u64),
}

/// A state space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Space {
    Global,
    Shared,
    Const,
    Param,
}

/// `[base+off]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Addr {
    pub base: Opnd,
    pub off: i64,
    /// For `ld.param`: the parameter's index.
    pub param: Option<usize>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum F1 {
    Neg,
    Abs,
    SqrtRn,
    SqrtApprox,
    RcpRn,
    RcpApprox,
    RsqrtApprox,
    Ex2Approx,
    Lg2Approx,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum F2 {
    Add,
    Sub,
    Mul,
    DivRn,
    DivApprox,
    DivFull,
    Min,
    Max,
    Copysign,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum I2 {
    Add,
    Sub,
    MulLo,
    MulHi,
    MulWide,
    And,
    Or,
    Xor,
    Shl,
    Shr,
    Min,
    Max,
    Div,
    Rem,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Equ,
    Neu,
    Ltu,
    Leu,
    Gtu,
    Geu,
    Num,
    Nan,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rnd {
    Rn,
    Rz,
    Rm,
    Rp,
    Rni,
    Rzi,
    Rmi,
    Rpi,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShflMode {
    Up,
    Down,
    Bfly,
    Idx,
}

/// One decoded instruction.
#[derive(Clone, Debug, PartialEq)]
pub enum Kind {
    F1 {
        op: F1,
        ftz: bool,
        d: u16,
        a: Opnd,
    },
    F2 {
        op: F2,
        ftz: bool,
        nan: bool,
        d: u16,
        a: Opnd,
        b: Opnd,
    },
    Fma {
        ftz: bool,
        d: u16,
        a: Opnd,
        b: Opnd,
        c: Opnd,
    },
    I2 {
        op: I2,
        ty: Ty,
        d: u16,
        a: Opnd,
        b: Opnd,
    },
    Mad {
        wide: bool,
        ty: Ty,
        d: u16,
        a: Opnd,
        b: Opnd,
        c: Opnd,
    },
    Not {
        ty: Ty,
        d: u16,
        a: Opnd,
    },
    Setp {
        cmp: Cmp,
        ty: Ty,
        ftz: bool,
        d: u16,
        a: Opnd,
        b: Opnd,
    },
    Selp {
        ty: Ty,
        d: u16,
        a: Opnd,
        b: Opnd,
        p: Opnd,
    },
    Mov {
        ty: Ty,
        d: u16,
        a: Opnd,
    },
    Cvt {
        dst: Ty,
        src: Ty,
        rnd: Option<Rnd>,
        ftz: bool,
        sat: bool,
        d: u16,
        a: Opnd,
    },
    Cvta {
        d: u16,
        a: Opnd,
    },
    Ld {
        space: Space,
        ty: Ty,
        d: Vec<u16>,
        addr: Addr,
    },
    St {
        space: Space,
        ty: Ty,
        v: Vec<Opnd>,
        addr: Addr,
    },
    Shfl {
        mode: ShflMode,
        d: u16,
        a: Opnd,
        b: Opnd,
        c: Opnd,
        mask: Opnd,
    },
    /// `vote.sync.any.pred d, a, mask`: `d` is whether `a` holds on some lane of the warp.
    VoteAny {
        d: u16,
        a: Opnd,
        mask: Opnd,
    },
    BarWarp {
        mask: Opnd,
    },
    BarSync,
    Bra {
        target: usize,
    },
    Ret,
}

/// An instruction with its guard and source line.
#[derive(Clone, Debug)]
pub struct Inst {
    pub guard: Option<(u16, bool)>,
    pub kind: Kind,
    pub text: String,
}

/// A kernel entry.
#[derive(Clone, Debug)]
pub struct Entry {
    pub name: String,
    pub params: Vec<(String, Ty)>,
    pub regs: Vec<(String, Ty)>,
    pub code: Vec<Inst>,
}

/// A module-scope `.shared` or `.const` variable.
#[derive(Clone, Debug)]
pub struct Var {
    pub name: String,
    pub space: Space,
    pub offset: u64,
    pub size: usize,
    pub init: Vec<u8>,
}

/// A parsed module.
#[derive(Clone, Debug)]
pub struct Module {
    pub entries: HashMap<String, Entry>,
    pub vars: Vec<Var>,
    pub shared_bytes: usize,
    pub const_bytes: Vec<u8>,
}

/// Where `.shared` and `.const` symbols live (their own address windows: `ld.shared` and
/// `ld.const` say which).
pub const SHARED_BASE: u64 = 0x1000;
pub const CONST_BASE: u64 = 0x1000;

fn strip_comments(src: &str) -> String {
    let mut out = String::with_capacity(src.len());
    let mut rest = src;
    loop {
        let line = rest.find("//");
        let block = rest.find("/*");
        match (line, block) {
            (Some(l), b) if b.is_none_or(|b| l < b) => {
                out.push_str(&rest[..l]);
                rest = &rest[l..];
                let end = rest.find('\n').unwrap_or(rest.len());
                rest = &rest[end..];
            }
            (_, Some(b)) => {
                out.push_str(&rest[..b]);
                rest = &rest[b..];
                let end = rest.find("*/").map_or(rest.len(), |e| e + 2);
                rest = &rest[end..];
            }
            _ => {
                out.push_str(rest);
                return out;
            }
        }
    }
}

/// Splits at top-level commas (not inside `{}` or `[]`).
fn split_operands(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0;
    let mut cur = String::new();
    for c in s.chars() {
        match c {
            '{' | '[' => depth += 1,
            '}' | ']' => depth -= 1,
            ',' if depth == 0 => {
                out.push(cur.trim().to_string());
                cur.clear();
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out
}

fn parse_int(s: &str) -> Option<i64> {
    let (neg, body) = match s.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, s),
    };
    let body = body.strip_suffix('U').unwrap_or(body);
    let v = if let Some(h) = body.strip_prefix("0x").or_else(|| body.strip_prefix("0X")) {
        u64::from_str_radix(h, 16).ok()? as i64
    } else {
        body.parse::<u64>().ok()? as i64
    };
    Some(if neg { v.wrapping_neg() } else { v })
}

struct Ctx<'a> {
    regs: HashMap<String, (u16, Ty)>,
    params: &'a [(String, Ty)],
    syms: &'a HashMap<String, (Space, u64)>,
}

impl Ctx<'_> {
    fn reg(&self, s: &str) -> Result<(u16, Ty), String> {
        self.regs
            .get(s)
            .copied()
            .ok_or_else(|| format!("undeclared register `{s}`"))
    }
    /// A destination register whose declared type fits `ty` (same size; predicates only as
    /// predicates).
    fn dst(&self, s: &str, ty: Ty) -> Result<u16, String> {
        let (r, rt) = self.reg(s)?;
        check_fit(s, rt, ty)?;
        Ok(r)
    }
    fn src(&self, s: &str, ty: Ty) -> Result<Opnd, String> {
        if s.starts_with('%') {
            let sreg = match s {
                "%tid.x" => Some(Sreg::Tid),
                "%ntid.x" => Some(Sreg::Ntid),
                "%ctaid.x" => Some(Sreg::Ctaid),
                "%nctaid.x" => Some(Sreg::Nctaid),
                "%laneid" => Some(Sreg::Laneid),
                "%tid.y" | "%tid.z" | "%ctaid.y" | "%ctaid.z" => Some(Sreg::Zero),
                "%ntid.y" | "%ntid.z" | "%nctaid.y" | "%nctaid.z" => Some(Sreg::One),
                _ => None,
            };
            if let Some(sr) = sreg {
                if ty.bytes() != 4 {
                    return Err(format!("special register `{s}` read as {ty:?}"));
                }
                return Ok(Opnd::Sreg(sr));
            }
            let (r, rt) = self.reg(s)?;
            check_fit(s, rt, ty)?;
            return Ok(Opnd::Reg(r));
        }
        if let Some(h) = s.strip_prefix("0f").or_else(|| s.strip_prefix("0F")) {
            if ty.bytes() != 4 || h.len() != 8 {
                return Err(format!("f32 immediate `{s}` used as {ty:?}"));
            }
            return u32::from_str_radix(h, 16)
                .map(|b| Opnd::FBits(b as u64))
                .map_err(|_| format!("bad immediate `{s}`"));
        }
        if let Some(h) = s.strip_prefix("0d").or_else(|| s.strip_prefix("0D")) {
            if ty != Ty::F64 || h.len() != 16 {
                return Err(format!("f64 immediate `{s}` used as {ty:?}"));
            }
            return u64::from_str_radix(h, 16)
                .map(Opnd::FBits)
                .map_err(|_| format!("bad immediate `{s}`"));
        }
        if let Some(v) = parse_int(s) {
            if ty.is_float() {
                return Err(format!("integer immediate `{s}` used as {ty:?}"));
            }
            return Ok(Opnd::Int(v));
        }
        if let Some((_, addr)) = self.syms.get(s) {
            if ty.bytes() != 8 {
                return Err(format!("address of `{s}` taken as {ty:?}"));
            }
            return Ok(Opnd::Sym(*addr));
        }
        Err(format!("unknown operand `{s}`"))
    }
    fn addr(&self, s: &str, space: Space) -> Result<Addr, String> {
        let inner = s
            .strip_prefix('[')
            .and_then(|x| x.strip_suffix(']'))
            .ok_or_else(|| format!("expected an address, got `{s}`"))?
            .trim();
        if space == Space::Param {
            let i = self
                .params
                .iter()
                .position(|(n, _)| n == inner)
                .ok_or_else(|| format!("unknown parameter `{inner}`"))?;
            return Ok(Addr {
                base: Opnd::Int(0),
                off: 0,
                param: Some(i),
            });
        }
        let (base, off) = match inner.find(['+', '-']).filter(|&i| i > 0) {
            Some(i) => {
                let off = parse_int(inner[i..].trim_start_matches('+').trim())
                    .ok_or_else(|| format!("bad offset in `{s}`"))?;
                (inner[..i].trim(), off)
            }
            None => (inner, 0),
        };
        let base = if let Some(v) = parse_int(base) {
            Opnd::Int(v)
        } else {
            self.src(base, Ty::U64)?
        };
        Ok(Addr {
            base,
            off,
            param: None,
        })
    }
}

/// Whether `ld`/`st` of `ty` may use the register type `reg`: the ISA lets the data operand of a
/// sub-word integer load or store be wider than the type ("8-bit or 16-bit values may be held
/// directly in 32-bit or 64-bit registers"): a load zero- or sign-extends, a store writes the
/// low bytes.
fn fits_ld_st(reg: Ty, ty: Ty) -> bool {
    let sub_word = matches!(ty, Ty::B8 | Ty::U8 | Ty::S8 | Ty::B16 | Ty::U16 | Ty::S16);
    (sub_word && reg != Ty::Pred && reg.bytes() >= ty.bytes()) || check_fit("", reg, ty).is_ok()
}

fn check_fit(name: &str, reg: Ty, ty: Ty) -> Result<(), String> {
    let ok = if reg == Ty::Pred || ty == Ty::Pred {
        reg == ty
    } else {
        reg.bytes() == ty.bytes()
    };
    if ok {
        Ok(())
    } else {
        Err(format!("register `{name}` (.{reg:?}) used as .{ty:?}"))
    }
}

/// Parses a module.
pub fn parse(src: &str) -> Result<Module, String> {
    let text = strip_comments(src);
    let mut module = Module {
        entries: HashMap::new(),
        vars: Vec::new(),
        shared_bytes: 0,
        const_bytes: Vec::new(),
    };
    let mut syms: HashMap<String, (Space, u64)> = HashMap::new();
    let mut rest = text.as_str();
    while let Some(start) = rest.find('.') {
        rest = &rest[start..];
        if rest.starts_with(".visible .entry") || rest.starts_with(".entry") {
            let open = rest.find('(').ok_or("entry without `(`")?;
            let name = rest[..open]
                .split_whitespace()
                .last()
                .ok_or("entry without a name")?
                .to_string();
            let close = rest.find(')').ok_or("entry without `)`")?;
            let params = parse_params(&rest[open + 1..close])?;
            let body_start = rest[close..].find('{').ok_or("entry without a body")? + close;
            let body_end = matching_brace(rest, body_start)?;
            let body = &rest[body_start + 1..body_end];
            let entry = parse_entry(&name, params, body, &syms)
                .map_err(|e| format!("entry `{name}`: {e}"))?;
            module.entries.insert(name, entry);
            rest = &rest[body_end + 1..];
        } else if rest.starts_with(".shared") || rest.starts_with(".const") {
            let end = rest.find(';').ok_or("declaration without `;`")?;
            let decl = &rest[..end];
            let var = parse_var(decl, &mut module)?;
            syms.insert(var.name.clone(), (var.space, var.offset));
            module.vars.push(var);
            rest = &rest[end + 1..];
        } else if rest.starts_with(".version")
            || rest.starts_with(".target")
            || rest.starts_with(".address_size")
        {
            let end = rest.find('\n').unwrap_or(rest.len());
            rest = &rest[end..];
        } else {
            let line = rest.lines().next().unwrap_or("");
            return Err(format!("unsupported module-scope directive `{line}`"));
        }
    }
    Ok(module)
}

fn matching_brace(s: &str, open: usize) -> Result<usize, String> {
    let mut depth = 0;
    for (i, c) in s[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return Ok(open + i);
                }
            }
            _ => {}
        }
    }
    Err("unbalanced braces".into())
}

fn parse_params(s: &str) -> Result<Vec<(String, Ty)>, String> {
    let mut out = Vec::new();
    for p in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let words: Vec<&str> = p.split_whitespace().collect();
        match words.as_slice() {
            [".param", ty, name] => {
                let t = ty
                    .strip_prefix('.')
                    .and_then(Ty::from)
                    .ok_or_else(|| format!("unsupported parameter `{p}`"))?;
                out.push((name.to_string(), t));
            }
            _ => return Err(format!("unsupported parameter `{p}`")),
        }
    }
    Ok(out)
}

/// `.shared .align A .b8 NAME[N]` or `.const .align A .TYPE NAME[N] = {..}`.
fn parse_var(decl: &str, module: &mut Module) -> Result<Var, String> {
    let (head, init) = match decl.split_once('=') {
        Some((h, i)) => (h.trim(), Some(i.trim())),
        None => (decl.trim(), None),
    };
    let words: Vec<&str> = head.split_whitespace().collect();
    let bad = || format!("unsupported declaration `{decl}`");
    let (space, align, ty, name) = match words.as_slice() {
        [sp, ".align", a, ty, name] => (*sp, a.parse::<u64>().map_err(|_| bad())?, *ty, *name),
        [sp, ty, name] => (*sp, 1, *ty, *name),
        _ => return Err(bad()),
    };
    let space = match space {
        ".shared" => Space::Shared,
        ".const" => Space::Const,
        _ => return Err(bad()),
    };
    let ty = ty.strip_prefix('.').and_then(Ty::from).ok_or_else(bad)?;
    let (name, count) = match name.split_once('[') {
        Some((n, c)) => (
            n,
            c.trim_end_matches(']')
                .parse::<usize>()
                .map_err(|_| bad())?,
        ),
        None => (name, 1),
    };
    let size = count * ty.bytes().max(1);
    let mut bytes = Vec::new();
    if let Some(init) = init {
        if space != Space::Const {
            return Err(format!("initialized .shared variable: `{decl}`"));
        }
        let items = init
            .strip_prefix('{')
            .and_then(|x| x.strip_suffix('}'))
            .ok_or_else(bad)?;
        for item in items.split(',').map(str::trim) {
            let v: u64 = if let Some(h) = item.strip_prefix("0f") {
                u32::from_str_radix(h, 16).map_err(|_| bad())? as u64
            } else if let Some(h) = item.strip_prefix("0d") {
                u64::from_str_radix(h, 16).map_err(|_| bad())?
            } else {
                parse_int(item).ok_or_else(bad)? as u64
            };
            bytes.extend_from_slice(&v.to_le_bytes()[..ty.bytes()]);
        }
        if bytes.len() > size {
            return Err(format!("too many initializers: `{decl}`"));
        }
    }
    bytes.resize(size, 0);
    let align = align.max(1);
    let offset = match space {
        Space::Shared => {
            let off = (module.shared_bytes as u64).div_ceil(align) * align;
            module.shared_bytes = off as usize + size;
            SHARED_BASE + off
        }
        _ => {
            let off = (module.const_bytes.len() as u64).div_ceil(align) * align;
            module.const_bytes.resize(off as usize, 0);
            module.const_bytes.extend_from_slice(&bytes);
            CONST_BASE + off
        }
    };
    Ok(Var {
        name: name.to_string(),
        space,
        offset,
        size,
        init: bytes,
    })
}

fn parse_entry(
    name: &str,
    params: Vec<(String, Ty)>,
    body: &str,
    syms: &HashMap<String, (Space, u64)>,
) -> Result<Entry, String> {
    let mut regs_list: Vec<(String, Ty)> = Vec::new();
    let mut regs = HashMap::new();
    let mut labels: HashMap<String, usize> = HashMap::new();
    let mut stmts: Vec<String> = Vec::new();
    for raw in body.split(';') {
        let mut s = raw.trim();
        // Labels in front of the statement.
        while let Some(colon) = s.find(':') {
            let label = s[..colon].trim();
            if label.is_empty()
                || !label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
            {
                break;
            }
            labels.insert(label.to_string(), stmts.len());
            s = s[colon + 1..].trim();
        }
        if s.is_empty() {
            continue;
        }
        if let Some(decl) = s.strip_prefix(".reg") {
            let words: Vec<&str> = decl.split_whitespace().collect();
            let [ty, spec] = words.as_slice() else {
                return Err(format!("unsupported declaration `{s}`"));
            };
            let ty = ty
                .strip_prefix('.')
                .and_then(Ty::from)
                .ok_or_else(|| format!("unsupported register type in `{s}`"))?;
            let names: Vec<String> = match spec.split_once('<') {
                Some((prefix, n)) => {
                    let n: usize = n
                        .trim_end_matches('>')
                        .parse()
                        .map_err(|_| format!("bad declaration `{s}`"))?;
                    (0..n).map(|i| format!("{prefix}{i}")).collect()
                }
                None => vec![spec.to_string()],
            };
            for n in names {
                let id = u16::try_from(regs_list.len()).map_err(|_| "too many registers")?;
                regs.insert(n.clone(), (id, ty));
                regs_list.push((n, ty));
            }
            continue;
        }
        if s.starts_with('.') {
            return Err(format!("unsupported directive in an entry: `{s}`"));
        }
        stmts.push(s.to_string());
    }
    let ctx = Ctx {
        regs,
        params: &params,
        syms,
    };
    let mut code = Vec::with_capacity(stmts.len());
    for s in &stmts {
        let inst = parse_inst(s, &ctx, &labels).map_err(|e| format!("`{s}`: {e}"))?;
        code.push(inst);
    }
    Ok(Entry {
        name: name.to_string(),
        params,
        regs: regs_list,
        code,
    })
}

fn unsupported(s: &str) -> String {
    format!("unsupported instruction `{s}` (the emulator does not implement it)")
}

fn parse_inst(s: &str, ctx: &Ctx<'_>, labels: &HashMap<String, usize>) -> Result<Inst, String> {
    let mut s2 = s;
    let mut guard = None;
    if let Some(g) = s2.strip_prefix('@') {
        let (p, rest) = g
            .split_once(char::is_whitespace)
            .ok_or("guard without instruction")?;
        let (neg, p) = match p.strip_prefix('!') {
            Some(p) => (true, p),
            None => (false, p),
        };
        let (r, t) = ctx.reg(p)?;
        if t != Ty::Pred {
            return Err(format!("guard `{p}` is not a predicate"));
        }
        guard = Some((r, !neg));
        s2 = rest.trim();
    }
    let (op, args) = match s2.split_once(char::is_whitespace) {
        Some((o, a)) => (o, a.trim()),
        None => (s2, ""),
    };
    let a = split_operands(args);
    let parts: Vec<&str> = op.split('.').collect();
    let base = parts[0];
    let mods: Vec<&str> = parts[1..].to_vec();
    let tys: Vec<Ty> = mods.iter().filter_map(|m| Ty::from(m)).collect();
    let flags: Vec<&str> = mods
        .iter()
        .copied()
        .filter(|m| Ty::from(m).is_none())
        .collect();
    let has = |f: &str| flags.contains(&f);
    let only = |allowed: &[&str]| flags.iter().all(|f| allowed.contains(f));
    let nargs = |n: usize| -> Result<(), String> {
        if a.len() == n {
            Ok(())
        } else {
            Err(format!("expected {n} operands, got {}", a.len()))
        }
    };
    let one_ty = || -> Result<Ty, String> {
        match tys.as_slice() {
            [t] => Ok(*t),
            _ => Err(unsupported(s)),
        }
    };
    let kind = match base {
        "add" | "sub" | "mul" | "div" | "min" | "max" | "copysign" | "fma" | "mad"
            if tys == [Ty::F32] =>
        {
            let ftz = has("ftz");
            if base == "fma" || (base == "mad" && has("rn")) {
                if !only(&["rn", "ftz"]) || !has("rn") {
                    return Err(unsupported(s));
                }
                nargs(4)?;
                Kind::Fma {
                    ftz,
                    d: ctx.dst(&a[0], Ty::F32)?,
                    a: ctx.src(&a[1], Ty::F32)?,
                    b: ctx.src(&a[2], Ty::F32)?,
                    c: ctx.src(&a[3], Ty::F32)?,
                }
            } else {
                let op = match base {
                    "add" if only(&["rn", "ftz"]) => F2::Add,
                    "sub" if only(&["rn", "ftz"]) => F2::Sub,
                    "mul" if only(&["rn", "ftz"]) => F2::Mul,
                    "div" if has("rn") && only(&["rn", "ftz"]) => F2::DivRn,
                    "div" if has("approx") && only(&["approx", "ftz"]) => F2::DivApprox,
                    "div" if has("full") && only(&["full", "ftz"]) => F2::DivFull,
                    "min" if only(&["ftz", "NaN"]) => F2::Min,
                    "max" if only(&["ftz", "NaN"]) => F2::Max,
                    "copysign" if flags.is_empty() => F2::Copysign,
                    _ => return Err(unsupported(s)),
                };
                nargs(3)?;
                Kind::F2 {
                    op,
                    ftz,
                    nan: has("NaN"),
                    d: ctx.dst(&a[0], Ty::F32)?,
                    a: ctx.src(&a[1], Ty::F32)?,
                    b: ctx.src(&a[2], Ty::F32)?,
                }
            }
        }
        "neg" | "abs" | "sqrt" | "rcp" | "rsqrt" | "ex2" | "lg2" if tys == [Ty::F32] => {
            let ftz = has("ftz");
            let op = match base {
                "neg" if only(&["ftz"]) => F1::Neg,
                "abs" if only(&["ftz"]) => F1::Abs,
                "sqrt" if has("rn") && only(&["rn", "ftz"]) => F1::SqrtRn,
                "sqrt" if has("approx") && only(&["approx", "ftz"]) => F1::SqrtApprox,
                "rcp" if has("rn") && only(&["rn", "ftz"]) => F1::RcpRn,
                "rcp" if has("approx") && only(&["approx", "ftz"]) => F1::RcpApprox,
                "rsqrt" if has("approx") && only(&["approx", "ftz"]) => F1::RsqrtApprox,
                "ex2" if has("approx") && only(&["approx", "ftz"]) => F1::Ex2Approx,
                "lg2" if has("approx") && only(&["approx", "ftz"]) => F1::Lg2Approx,
                _ => return Err(unsupported(s)),
            };
            nargs(2)?;
            Kind::F1 {
                op,
                ftz,
                d: ctx.dst(&a[0], Ty::F32)?,
                a: ctx.src(&a[1], Ty::F32)?,
            }
        }
        "mad" => {
            let ty = one_ty()?;
            let wide = match flags.as_slice() {
                ["lo"] => false,
                ["wide"] if ty.bytes() == 4 => true,
                _ => return Err(unsupported(s)),
            };
            if ty.is_float() || ty == Ty::Pred {
                return Err(unsupported(s));
            }
            nargs(4)?;
            let dty = if wide { Ty::U64 } else { ty };
            Kind::Mad {
                wide,
                ty,
                d: ctx.dst(&a[0], dty)?,
                a: ctx.src(&a[1], ty)?,
                b: ctx.src(&a[2], ty)?,
                c: ctx.src(&a[3], dty)?,
            }
        }
        "add" | "sub" | "mul" | "and" | "or" | "xor" | "shl" | "shr" | "min" | "max" | "div"
        | "rem" => {
            let ty = one_ty()?;
            if ty.is_float() {
                return Err(unsupported(s));
            }
            let op = match (base, flags.as_slice()) {
                ("add", []) => I2::Add,
                ("sub", []) => I2::Sub,
                ("mul", ["lo"]) => I2::MulLo,
                ("mul", ["hi"]) => I2::MulHi,
                ("mul", ["wide"]) if ty.bytes() == 4 => I2::MulWide,
                ("and", []) => I2::And,
                ("or", []) => I2::Or,
                ("xor", []) => I2::Xor,
                ("shl", []) => I2::Shl,
                ("shr", []) => I2::Shr,
                ("min", []) => I2::Min,
                ("max", []) => I2::Max,
                ("div", []) => I2::Div,
                ("rem", []) => I2::Rem,
                _ => return Err(unsupported(s)),
            };
            if ty == Ty::Pred && !matches!(op, I2::And | I2::Or | I2::Xor) {
                return Err(unsupported(s));
            }
            nargs(3)?;
            let dty = if op == I2::MulWide { Ty::U64 } else { ty };
            let bty = if matches!(op, I2::Shl | I2::Shr) {
                Ty::U32
            } else {
                ty
            };
            Kind::I2 {
                op,
                ty,
                d: ctx.dst(&a[0], dty)?,
                a: ctx.src(&a[1], ty)?,
                b: ctx.src(&a[2], bty)?,
            }
        }
        "not" if flags.is_empty() => {
            let ty = one_ty()?;
            nargs(2)?;
            Kind::Not {
                ty,
                d: ctx.dst(&a[0], ty)?,
                a: ctx.src(&a[1], ty)?,
            }
        }
        "setp" => {
            let ty = one_ty()?;
            let cmp_s = flags.iter().copied().find(|f| *f != "ftz").unwrap_or("");
            let cmp = match cmp_s {
                "eq" => Cmp::Eq,
                "ne" => Cmp::Ne,
                "lt" | "lo" => Cmp::Lt,
                "le" | "ls" => Cmp::Le,
                "gt" | "hi" => Cmp::Gt,
                "ge" | "hs" => Cmp::Ge,
                "equ" => Cmp::Equ,
                "neu" => Cmp::Neu,
                "ltu" => Cmp::Ltu,
                "leu" => Cmp::Leu,
                "gtu" => Cmp::Gtu,
                "geu" => Cmp::Geu,
                "num" => Cmp::Num,
                "nan" => Cmp::Nan,
                _ => return Err(unsupported(s)),
            };
            if flags.len() != 1 + usize::from(has("ftz")) || a.len() != 3 || a[0].contains('|') {
                return Err(unsupported(s));
            }
            if !ty.is_float()
                && !matches!(
                    cmp,
                    Cmp::Eq | Cmp::Ne | Cmp::Lt | Cmp::Le | Cmp::Gt | Cmp::Ge
                )
            {
                return Err(unsupported(s));
            }
            Kind::Setp {
                cmp,
                ty,
                ftz: has("ftz"),
                d: ctx.dst(&a[0], Ty::Pred)?,
                a: ctx.src(&a[1], ty)?,
                b: ctx.src(&a[2], ty)?,
            }
        }
        "selp" if flags.is_empty() => {
            let ty = one_ty()?;
            nargs(4)?;
            Kind::Selp {
                ty,
                d: ctx.dst(&a[0], ty)?,
                a: ctx.src(&a[1], ty)?,
                b: ctx.src(&a[2], ty)?,
                p: ctx.src(&a[3], Ty::Pred)?,
            }
        }
        "mov" if flags.is_empty() => {
            let ty = one_ty()?;
            nargs(2)?;
            Kind::Mov {
                ty,
                d: ctx.dst(&a[0], ty)?,
                a: ctx.src(&a[1], ty)?,
            }
        }
        "cvt" => {
            let [dst, src] = tys.as_slice() else {
                return Err(unsupported(s));
            };
            let mut rnd = None;
            for f in &flags {
                rnd = Some(match *f {
                    "rn" => Rnd::Rn,
                    "rz" => Rnd::Rz,
                    "rm" => Rnd::Rm,
                    "rp" => Rnd::Rp,
                    "rni" => Rnd::Rni,
                    "rzi" => Rnd::Rzi,
                    "rmi" => Rnd::Rmi,
                    "rpi" => Rnd::Rpi,
                    "ftz" | "sat" => continue,
                    _ => return Err(unsupported(s)),
                });
            }
            nargs(2)?;
            Kind::Cvt {
                dst: *dst,
                src: *src,
                rnd,
                ftz: has("ftz"),
                sat: has("sat"),
                d: ctx.dst(&a[0], *dst)?,
                a: ctx.src(&a[1], *src)?,
            }
        }
        "cvta" if flags == ["to", "global"] && tys == [Ty::U64] => {
            nargs(2)?;
            Kind::Cvta {
                d: ctx.dst(&a[0], Ty::U64)?,
                a: ctx.src(&a[1], Ty::U64)?,
            }
        }
        "ld" | "st" => {
            let ty = one_ty()?;
            let mut space = None;
            let mut vec = 1;
            for f in &flags {
                match *f {
                    "global" => space = Some(Space::Global),
                    "shared" => space = Some(Space::Shared),
                    "const" => space = Some(Space::Const),
                    "param" if base == "ld" => space = Some(Space::Param),
                    "v2" => vec = 2,
                    "v4" => vec = 4,
                    _ => return Err(unsupported(s)),
                }
            }
            let space = space.ok_or_else(|| {
                format!("{} (generic addressing is not emulated)", unsupported(s))
            })?;
            if (space == Space::Const && base == "st") || (space == Space::Param && vec != 1) {
                return Err(unsupported(s));
            }
            nargs(2)?;
            let (regs_s, addr_s) = if base == "ld" {
                (&a[0], &a[1])
            } else {
                (&a[1], &a[0])
            };
            let items: Vec<&str> = if vec == 1 {
                vec![regs_s.as_str()]
            } else {
                regs_s
                    .strip_prefix('{')
                    .and_then(|x| x.strip_suffix('}'))
                    .ok_or_else(|| format!("expected a vector operand, got `{regs_s}`"))?
                    .split(',')
                    .map(str::trim)
                    .collect()
            };
            if items.len() != vec {
                return Err(format!("expected {vec} registers in `{regs_s}`"));
            }
            let addr = ctx.addr(addr_s, space)?;
            if let Some(i) = addr.param {
                if ctx.params[i].1.bytes() != ty.bytes() {
                    return Err(format!("parameter `{}` read as .{ty:?}", ctx.params[i].0));
                }
            }
            if base == "ld" {
                Kind::Ld {
                    space,
                    ty,
                    d: items
                        .iter()
                        .map(|r| match ctx.reg(r) {
                            Ok((reg, rt)) if fits_ld_st(rt, ty) => Ok(reg),
                            _ => ctx.dst(r, ty),
                        })
                        .collect::<Result<_, _>>()?,
                    addr,
                }
            } else {
                Kind::St {
                    space,
                    ty,
                    v: items
                        .iter()
                        .map(|r| match ctx.reg(r) {
                            Ok((reg, rt)) if fits_ld_st(rt, ty) => Ok(Opnd::Reg(reg)),
                            _ => ctx.src(r, ty),
                        })
                        .collect::<Result<_, _>>()?,
                    addr,
                }
            }
        }
        "shfl" if tys == [Ty::B32] => {
            let mode = match flags.as_slice() {
                ["sync", "down"] => ShflMode::Down,
                ["sync", "up"] => ShflMode::Up,
                ["sync", "bfly"] => ShflMode::Bfly,
                ["sync", "idx"] => ShflMode::Idx,
                _ => return Err(unsupported(s)),
            };
            nargs(5)?;
            if a[0].contains('|') {
                return Err(unsupported(s));
            }
            Kind::Shfl {
                mode,
                d: ctx.dst(&a[0], Ty::B32)?,
                a: ctx.src(&a[1], Ty::B32)?,
                b: ctx.src(&a[2], Ty::B32)?,
                c: ctx.src(&a[3], Ty::B32)?,
                mask: ctx.src(&a[4], Ty::B32)?,
            }
        }
        "vote" if tys == [Ty::Pred] && flags.as_slice() == ["sync", "any"] => {
            nargs(3)?;
            Kind::VoteAny {
                d: ctx.dst(&a[0], Ty::Pred)?,
                a: ctx.src(&a[1], Ty::Pred)?,
                mask: ctx.src(&a[2], Ty::B32)?,
            }
        }
        "bar" if op == "bar.warp.sync" => {
            nargs(1)?;
            Kind::BarWarp {
                mask: ctx.src(&a[0], Ty::B32)?,
            }
        }
        "bar" | "barrier" if (op == "bar.sync" || op == "barrier.sync") && a == ["0"] => {
            Kind::BarSync
        }
        "bra" if flags.is_empty() || flags == ["uni"] => {
            nargs(1)?;
            Kind::Bra {
                target: *labels
                    .get(a[0].as_str())
                    .ok_or_else(|| format!("unknown label `{}`", a[0]))?,
            }
        }
        "ret" | "exit" if mods.is_empty() && a.is_empty() => Kind::Ret,
        _ => return Err(unsupported(s)),
    };
    Ok(Inst {
        guard,
        kind,
        text: s.to_string(),
    })
}
