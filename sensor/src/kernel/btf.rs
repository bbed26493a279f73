//! Just enough of a BTF reader to find where a struct member lives in the running kernel.
//!
//! Format: Documentation/bpf/btf.rst ("Type Encoding"). aya's own BTF parser keeps its type
//! accessors crate-private, so the agent reads the few offsets it needs here: a header, a type
//! section of variable-length records, and a string section.

use std::{collections::HashMap, path::Path};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum BtfError {
    #[error(
        "cannot read BTF from {path} (a kernel built with CONFIG_DEBUG_INFO_BTF=y has it; else set kernel.btf): {cause}"
    )]
    Read { path: String, cause: std::io::Error },
    #[error("malformed BTF: {0}")]
    Malformed(&'static str),
    #[error("BTF has no struct {0}")]
    NoStruct(String),
    #[error("BTF struct {strukt} has no member {member}")]
    NoMember { strukt: String, member: String },
}

const MAGIC: u16 = 0xeb9f;
const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Debug, Clone)]
struct Member {
    name: u32,
    type_id: u32,
    bit_offset: u32,
}

#[derive(Debug, Clone)]
struct Type {
    kind: u32,
    name: u32,
    /// `size` for structs/unions, `type` for typedefs and modifiers.
    size_or_type: u32,
    members: Vec<Member>,
}

/// The kernel's types, parsed once.
pub struct Btf {
    /// Index `i` holds type id `i + 1` (id 0 is `void`).
    types: Vec<Type>,
    strings: Vec<u8>,
    structs_by_name: HashMap<String, u32>,
}

fn u16_at(data: &[u8], at: usize) -> Result<u16, BtfError> {
    data.get(at..at + 2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .ok_or(BtfError::Malformed("header truncated"))
}

fn u32_at(data: &[u8], at: usize) -> Result<u32, BtfError> {
    data.get(at..at + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or(BtfError::Malformed("record truncated"))
}

impl Btf {
    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        let data = std::fs::read(path).map_err(|cause| BtfError::Read {
            path: path.display().to_string(),
            cause,
        })?;
        Self::parse(&data)
    }

    /// Parses little-endian BTF (the only byte order of the kernels we run on).
    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        let (types, strings) = parse_sections(data)?;
        let mut btf = Self {
            types,
            strings,
            structs_by_name: HashMap::new(),
        };
        for (index, ty) in btf.types.iter().enumerate() {
            if ty.kind == KIND_STRUCT && ty.name != 0 {
                let name = btf.string(ty.name).to_owned();
                let id =
                    u32::try_from(index + 1).map_err(|_| BtfError::Malformed("too many types"))?;
                btf.structs_by_name.entry(name).or_insert(id);
            }
        }
        Ok(btf)
    }

    fn string(&self, offset: u32) -> &str {
        let rest = self.strings.get(offset as usize..).unwrap_or_default();
        let end = rest.iter().position(|b| *b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or_default()
    }

    fn by_id(&self, id: u32) -> Option<&Type> {
        self.types.get((id as usize).checked_sub(1)?)
    }

    /// Follows typedefs and qualifiers down to the type they name.
    fn resolve(&self, mut id: u32) -> Option<&Type> {
        for _ in 0..32 {
            let ty = self.by_id(id)?;
            match ty.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = ty.size_or_type;
                }
                _ => return Some(ty),
            }
        }
        None
    }

    /// Byte offset of `member` in `struct strukt`, looking through anonymous struct and union
    /// members the way C does (`sock_common` keeps `skc_daddr` in an anonymous union).
    pub fn member_offset(&self, strukt: &str, member: &str) -> Result<u32, BtfError> {
        let id = *self
            .structs_by_name
            .get(strukt)
            .ok_or_else(|| BtfError::NoStruct(strukt.to_owned()))?;
        let ty = self
            .by_id(id)
            .ok_or(BtfError::Malformed("struct id out of range"))?;
        self.find_member(ty, member, 0, 0)
            .map(|(bits, _)| bits / 8)
            .ok_or_else(|| BtfError::NoMember {
                strukt: strukt.to_owned(),
                member: member.to_owned(),
            })
    }

    /// Byte offset of a member reached through named members: `["d_u", "d_alias"]` in
    /// `struct dentry` is `offsetof(struct dentry, d_u.d_alias)`.
    pub fn member_path_offset(&self, strukt: &str, path: &[&str]) -> Result<u32, BtfError> {
        let missing = || BtfError::NoMember {
            strukt: strukt.to_owned(),
            member: path.join("."),
        };
        let id = *self
            .structs_by_name
            .get(strukt)
            .ok_or_else(|| BtfError::NoStruct(strukt.to_owned()))?;
        let mut ty = self
            .by_id(id)
            .ok_or(BtfError::Malformed("struct id out of range"))?;
        let mut bits = 0;
        for (i, member) in path.iter().enumerate() {
            let (at, type_id) = self.find_member(ty, member, 0, 0).ok_or_else(missing)?;
            bits += at;
            if i + 1 < path.len() {
                ty = self
                    .resolve(type_id)
                    .filter(|t| matches!(t.kind, KIND_STRUCT | KIND_UNION))
                    .ok_or_else(missing)?;
            }
        }
        Ok(bits / 8)
    }

    /// The parameter types of raw tracepoint `name`, from its `btf_trace_<name>` typedef
    /// (a pointer to a function whose first parameter is the context): `["void *", "struct
    /// sock *", "int", "int"]` for `sock_send_length`. `None` when the kernel has no such
    /// tracepoint.
    pub fn raw_tracepoint_params(&self, name: &str) -> Option<Vec<String>> {
        let typedef = format!("btf_trace_{name}");
        let ty = self
            .types
            .iter()
            .find(|t| t.kind == KIND_TYPEDEF && self.string(t.name) == typedef)?;
        let pointer = self.resolve(ty.size_or_type)?;
        let proto = (pointer.kind == KIND_PTR)
            .then(|| self.resolve(pointer.size_or_type))
            .flatten()?;
        (proto.kind == KIND_FUNC_PROTO).then(|| {
            proto
                .members
                .iter()
                .map(|param| self.type_text(param.type_id, 0))
                .collect()
        })
    }

    /// [`Btf::raw_tracepoint_params`] for a tracepoint of a kernel module (ext4 or xfs built as
    /// a module): its `btf_trace_<name>` typedef is in the module's split BTF
    /// (`/sys/kernel/btf/<module>`), whose type ids and string offsets continue this vmlinux
    /// BTF's, so its sections are appended for the lookup and taken off again. `Ok(None)` when
    /// the module does not have it.
    pub fn module_raw_tracepoint_params(
        &mut self,
        module: &[u8],
        name: &str,
    ) -> Result<Option<Vec<String>>, BtfError> {
        let typedef = format!("btf_trace_{name}\0");
        if !module
            .windows(typedef.len())
            .any(|w| w == typedef.as_bytes())
        {
            return Ok(None); // not even its name: skip parsing
        }
        let (types, strings) = parse_sections(module)?;
        let (own_types, own_strings) = (self.types.len(), self.strings.len());
        self.types.extend(types);
        self.strings.extend_from_slice(&strings);
        let params = self.raw_tracepoint_params(name);
        self.types.truncate(own_types);
        self.strings.truncate(own_strings);
        Ok(params)
    }

    /// C-like text of a type, without qualifiers: `int`, `struct sock *`, `void *`.
    fn type_text(&self, id: u32, depth: u32) -> String {
        if id == 0 {
            return "void".to_owned();
        }
        let Some(ty) = self.by_id(id) else {
            return "?".to_owned();
        };
        match ty.kind {
            _ if depth > 8 => "?".to_owned(),
            KIND_PTR => format!("{} *", self.type_text(ty.size_or_type, depth + 1)),
            KIND_STRUCT => format!("struct {}", self.string(ty.name)),
            KIND_UNION => format!("union {}", self.string(ty.name)),
            KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                self.type_text(ty.size_or_type, depth + 1)
            }
            _ => self.string(ty.name).to_owned(),
        }
    }

    /// The bit offset and type of `member`, looking through anonymous members.
    fn find_member(
        &self,
        ty: &Type,
        member: &str,
        base_bits: u32,
        depth: u32,
    ) -> Option<(u32, u32)> {
        if depth > 8 {
            return None;
        }
        for m in &ty.members {
            let bits = base_bits + m.bit_offset;
            if m.name == 0 {
                let inner = self.resolve(m.type_id)?;
                if matches!(inner.kind, KIND_STRUCT | KIND_UNION)
                    && let Some(found) = self.find_member(inner, member, bits, depth + 1)
                {
                    return Some(found);
                }
            } else if self.string(m.name) == member {
                return Some((bits, m.type_id));
            }
        }
        None
    }
}

/// The type records and the string section of BTF bytes (whole, or a module's split BTF,
/// whose type ids and string offsets continue those of vmlinux).
fn parse_sections(data: &[u8]) -> Result<(Vec<Type>, Vec<u8>), BtfError> {
    if u16_at(data, 0)? != MAGIC {
        return Err(BtfError::Malformed("bad magic (not little-endian BTF)"));
    }
    let hdr_len = u32_at(data, 4)? as usize;
    let type_off = u32_at(data, 8)? as usize;
    let type_len = u32_at(data, 12)? as usize;
    let str_off = u32_at(data, 16)? as usize;
    let str_len = u32_at(data, 20)? as usize;
    let section = |off: usize, len: usize| {
        let start = hdr_len.checked_add(off)?;
        data.get(start..start.checked_add(len)?)
    };
    let type_data = section(type_off, type_len).ok_or(BtfError::Malformed("type section"))?;
    let strings = section(str_off, str_len)
        .ok_or(BtfError::Malformed("string section"))?
        .to_vec();

    let mut types = Vec::new();
    let mut at = 0;
    while at < type_data.len() {
        let name = u32_at(type_data, at)?;
        let info = u32_at(type_data, at + 4)?;
        let size_or_type = u32_at(type_data, at + 8)?;
        at += 12;
        let kind = (info >> 24) & 0x1f;
        let vlen = (info & 0xffff) as usize;
        let kind_flag = info >> 31 == 1;
        let mut members = Vec::new();
        let extra = match kind {
            KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
            KIND_ARRAY => 12,
            KIND_STRUCT | KIND_UNION => {
                for i in 0..vlen {
                    let m = at + i * 12;
                    let offset = u32_at(type_data, m + 8)?;
                    members.push(Member {
                        name: u32_at(type_data, m)?,
                        type_id: u32_at(type_data, m + 4)?,
                        // With kind_flag the top 8 bits hold a bitfield's size.
                        bit_offset: if kind_flag {
                            offset & 0x00ff_ffff
                        } else {
                            offset
                        },
                    });
                }
                vlen * 12
            }
            KIND_FUNC_PROTO => {
                for i in 0..vlen {
                    let p = at + i * 8;
                    members.push(Member {
                        name: u32_at(type_data, p)?,
                        type_id: u32_at(type_data, p + 4)?,
                        bit_offset: 0,
                    });
                }
                vlen * 8
            }
            KIND_ENUM => vlen * 8,
            KIND_DATASEC | KIND_ENUM64 => vlen * 12,
            0..=19 => 0,
            _ => return Err(BtfError::Malformed("unknown type kind")),
        };
        at += extra;
        types.push(Type {
            kind,
            name,
            size_or_type,
            members,
        });
    }
    Ok((types, strings))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds BTF bytes: `struct outer { int a; union { int b; int c; }; int d; }` behind a
    /// typedef, the shape of `struct sock_common`.
    fn sample() -> Vec<u8> {
        let strings = b"\0int\0outer\0a\0b\0c\0d\0outer_t\0btf_trace_probe\0".to_vec();
        let s = |name: &str| -> u32 {
            let needle = format!("\0{name}\0");
            u32::try_from(
                strings
                    .windows(needle.len())
                    .position(|w| w == needle.as_bytes())
                    .expect("name in table")
                    + 1,
            )
            .expect("small")
        };
        let mut types: Vec<u32> = Vec::new();
        let mut push = |words: &[u32]| types.extend_from_slice(words);
        // 1: int (4 bytes, encoding word follows)
        push(&[s("int"), KIND_INT << 24, 4, 32]);
        // 2: anonymous union { int b; int c; }
        push(&[0, (KIND_UNION << 24) | 2, 4, s("b"), 1, 0, s("c"), 1, 0]);
        // 3: typedef of the union, so resolution through typedefs is exercised
        push(&[0, KIND_TYPEDEF << 24, 2]);
        // 4: struct outer { int a; <anon> at 32 bits; int d at 64 bits }
        push(&[
            s("outer"),
            (KIND_STRUCT << 24) | 3,
            12,
            s("a"),
            1,
            0,
            0,
            3,
            32,
            s("d"),
            1,
            64,
        ]);
        // 5: const struct outer; 6: pointer to it; 7: void *
        push(&[0, KIND_CONST << 24, 4]);
        push(&[0, KIND_PTR << 24, 5]);
        push(&[0, KIND_PTR << 24, 0]);
        // 8: func_proto (void *, const struct outer *, int) -> void; 9: pointer; 10: typedef
        push(&[0, (KIND_FUNC_PROTO << 24) | 3, 0, 0, 7, 0, 6, 0, 1]);
        push(&[0, KIND_PTR << 24, 8]);
        push(&[s("btf_trace_probe"), KIND_TYPEDEF << 24, 9]);
        bytes(&types, &strings)
    }

    #[test]
    fn finds_members_through_anonymous_unions() {
        let btf = Btf::parse(&sample()).expect("parses");
        assert_eq!(btf.member_offset("outer", "a").expect("a"), 0);
        assert_eq!(btf.member_offset("outer", "b").expect("b"), 4);
        assert_eq!(btf.member_offset("outer", "c").expect("c"), 4);
        assert_eq!(btf.member_offset("outer", "d").expect("d"), 8);
        // A member's member, through a typedef'd anonymous union reached by name.
        assert_eq!(btf.member_path_offset("outer", &["a"]).expect("a"), 0);
        assert!(
            btf.member_path_offset("outer", &["a", "b"]).is_err(),
            "int has no members"
        );
    }

    #[test]
    fn raw_tracepoint_prototype() {
        let btf = Btf::parse(&sample()).expect("parses");
        assert_eq!(
            btf.raw_tracepoint_params("probe"),
            Some(vec![
                "void *".to_owned(),
                "struct outer *".to_owned(),
                "int".to_owned()
            ])
        );
        assert_eq!(btf.raw_tracepoint_params("absent"), None);
    }

    /// BTF bytes of these type records and strings, behind a standard header.
    fn bytes(types: &[u32], strings: &[u8]) -> Vec<u8> {
        let types: Vec<u8> = types.iter().flat_map(|w| w.to_le_bytes()).collect();
        let mut data = Vec::new();
        data.extend_from_slice(&MAGIC.to_le_bytes());
        data.extend_from_slice(&[1, 0]);
        for w in [
            24u32,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            data.extend_from_slice(&w.to_le_bytes());
        }
        data.extend_from_slice(&types);
        data.extend_from_slice(strings);
        data
    }

    /// A module's tracepoint, its types in split BTF on top of `sample()`: ids from 11 on,
    /// string offsets past the base's strings, parameters reaching into the base.
    #[test]
    fn raw_tracepoint_prototype_of_a_module() {
        let base = sample();
        let mut btf = Btf::parse(&base).expect("parses");
        let base_types = btf.types.len() as u32;
        let base_strings = btf.strings.len() as u32;
        let strings = b"\0btf_trace_modprobe\0";
        let module = bytes(
            &[
                // 11: pointer to struct outer (base id 4)
                0,
                KIND_PTR << 24,
                4,
                // 12: func_proto (void *, struct outer *, int) -> void; 13: pointer; 14: typedef
                0,
                (KIND_FUNC_PROTO << 24) | 3,
                0,
                0,
                7,
                0,
                base_types + 1,
                0,
                1,
                0,
                KIND_PTR << 24,
                base_types + 2,
                base_strings + 1,
                KIND_TYPEDEF << 24,
                base_types + 3,
            ],
            strings,
        );
        assert_eq!(
            btf.raw_tracepoint_params("modprobe"),
            None,
            "not in vmlinux"
        );
        assert_eq!(
            btf.module_raw_tracepoint_params(&module, "modprobe")
                .expect("parses"),
            Some(vec![
                "void *".to_owned(),
                "struct outer *".to_owned(),
                "int".to_owned()
            ])
        );
        assert_eq!(
            btf.module_raw_tracepoint_params(&module, "probe")
                .expect("parses"),
            None,
            "a vmlinux tracepoint is not the module's"
        );
        assert_eq!(
            (btf.types.len() as u32, btf.strings.len() as u32),
            (base_types, base_strings),
            "the module's types are taken off again"
        );
    }

    #[test]
    fn names_what_is_missing() {
        let btf = Btf::parse(&sample()).expect("parses");
        let err = btf.member_offset("outer", "zz").expect_err("absent");
        assert_eq!(err.to_string(), "BTF struct outer has no member zz");
        let err = btf.member_offset("nope", "a").expect_err("absent");
        assert_eq!(err.to_string(), "BTF has no struct nope");
    }

    #[test]
    fn rejects_truncated_and_foreign_data() {
        let data = sample();
        for cut in [0, 3, 23, data.len() - 1] {
            assert!(Btf::parse(&data[..cut]).is_err(), "cut at {cut}");
        }
        let mut swapped = data;
        // Big-endian BTF starts 0xeb 0x9f.
        swapped[0] = 0xeb;
        swapped[1] = 0x9f;
        assert!(Btf::parse(&swapped).is_err());
    }

    /// The real kernel: the offsets the sensor depends on, as `pahole`/bpftool would print them.
    #[test]
    fn reads_sock_common_from_the_running_kernel() {
        let path = Path::new("/sys/kernel/btf/vmlinux");
        let btf = Btf::from_file(path).expect("kernel BTF parses");
        // These two sit at the head of struct sock_common on every kernel since 2.6 (include/net/sock.h).
        assert_eq!(
            btf.member_offset("sock_common", "skc_daddr")
                .expect("daddr"),
            0
        );
        assert_eq!(
            btf.member_offset("sock_common", "skc_rcv_saddr")
                .expect("saddr"),
            4
        );
        assert_eq!(
            btf.member_offset("sock_common", "skc_dport")
                .expect("dport"),
            12
        );
    }
}
