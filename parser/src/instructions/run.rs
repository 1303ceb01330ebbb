//! RUN and its flags: `--mount` (bind, cache, tmpfs, secret, ssh), `--network`, `--security`,
//! `--device`, and our `--cache=never|ttl=<duration>`.

use crate::ast::{Span, Word};

use super::flags::{self, Kind, flag};
use super::util::{
    Nanos, format_go_duration, needs_expansion, parse_go_bool, parse_go_duration, parse_go_u32,
    suggest, with_suggestion,
};
use super::{CommandLine, Cx, command_line};

/// `RUN [flags] <command>`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Run {
    pub span: Span,
    pub command: CommandLine,
    pub mounts: Vec<Mount>,
    pub network: Network,
    pub security: Security,
    /// Our extension: `--cache=never` or `--cache=ttl=<duration>`.
    pub cache: Option<RunCache>,
    pub devices: Vec<Device>,
    /// The flags given, in the order first given (BuildKit's FlagsUsed).
    pub flags_used: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum MountType {
    Bind,
    Cache,
    Tmpfs,
    Secret,
    Ssh,
}

impl MountType {
    pub fn as_str(self) -> &'static str {
        match self {
            MountType::Bind => "bind",
            MountType::Cache => "cache",
            MountType::Tmpfs => "tmpfs",
            MountType::Secret => "secret",
            MountType::Ssh => "ssh",
        }
    }

    const ALL: [MountType; 5] = [
        MountType::Bind,
        MountType::Cache,
        MountType::Tmpfs,
        MountType::Secret,
        MountType::Ssh,
    ];
}

/// How concurrent builds share a cache mount.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Sharing {
    Shared,
    Private,
    Locked,
}

impl Sharing {
    pub fn as_str(self) -> &'static str {
        match self {
            Sharing::Shared => "shared",
            Sharing::Private => "private",
            Sharing::Locked => "locked",
        }
    }
}

/// One `--mount=…`, with BuildKit's defaults applied.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Mount {
    /// The `--mount` flag word.
    pub span: Span,
    /// The flag's value as written: parse it again with [`parse_mount`] and an expander when
    /// `needs_expansion` is set.
    pub raw: String,
    /// Default `bind`.
    pub kind: MountType,
    /// Stage, context or image to mount from.
    pub from: Option<String>,
    pub source: Option<String>,
    pub target: Option<String>,
    /// Default: read-only for bind, secret and ssh; writable for cache and tmpfs.
    pub read_only: bool,
    /// tmpfs `size`, in bytes.
    pub size_limit: Option<i64>,
    /// cache/secret/ssh `id`.
    pub id: Option<String>,
    /// cache `sharing`; `None` means shared.
    pub sharing: Option<Sharing>,
    /// secret/ssh: fail when unavailable.
    pub required: bool,
    /// secret: also (or instead) expose it as this environment variable.
    pub env: Option<String>,
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Some value holds a variable (or quotes): those fields are left raw or unset and
    /// unchecked until the planner re-parses `raw` with the build's values.
    pub needs_expansion: bool,
}

impl Default for Mount {
    fn default() -> Mount {
        Mount {
            span: Span::default(),
            raw: String::new(),
            kind: MountType::Bind,
            from: None,
            source: None,
            target: None,
            read_only: false,
            size_limit: None,
            id: None,
            sharing: None,
            required: false,
            env: None,
            mode: None,
            uid: None,
            gid: None,
            needs_expansion: false,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Network {
    #[default]
    Default,
    None,
    Host,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Security {
    #[default]
    Sandbox,
    Insecure,
}

/// `RUN --cache=…`: our extension to control step caching.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum RunCache {
    /// Always run the step.
    Never { span: Span },
    /// Reuse a cached result only while it is younger than this.
    Ttl { nanos: Nanos, span: Span },
}

impl RunCache {
    pub fn span(&self) -> Span {
        match self {
            RunCache::Never { span } | RunCache::Ttl { span, .. } => *span,
        }
    }
}

/// `RUN --device=name[,required]` (a CDI device).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Device {
    pub span: Span,
    pub name: String,
    pub required: bool,
}

const RUN_FLAGS: &[flags::Spec] = &[
    flag("mount", Kind::Strings),
    flag("network", Kind::String),
    flag("security", Kind::String),
    flag("device", Kind::Strings),
    flag("cache", Kind::String),
];

pub(crate) fn parse_run(cx: &mut Cx) -> Option<Run> {
    let node = cx.node;
    let fl = cx.flags(RUN_FLAGS);
    let mut mounts = Vec::new();
    for u in fl.all("mount") {
        let (mut m, errors) = parse_mount(&u.value.value, None);
        m.span = u.span;
        let ok = errors.is_empty();
        for e in errors {
            cx.error("invalid-mount", u.span, e, mount_help(&u.value.value));
        }
        if ok {
            mounts.push(m);
        }
    }
    let mut devices = Vec::new();
    for u in fl.all("device") {
        match parse_device(&u.value.value) {
            Ok(mut d) => {
                d.span = u.span;
                devices.push(d);
            }
            Err(e) => cx.error(
                "invalid-device",
                u.span,
                e,
                "write --device=<name>[,required] with a CDI device name such as vendor.com/gpu=all",
            ),
        }
    }
    let mut network = Network::Default;
    if let Some(u) = fl.get("network") {
        network = match u.value.value.as_str() {
            "default" => Network::Default,
            "none" => Network::None,
            "host" => Network::Host,
            v => {
                cx.error(
                    "invalid-network",
                    u.span,
                    format!("invalid network mode {}", crate::golang::quote(v)),
                    "use --network=default, --network=none or --network=host",
                );
                Network::Default
            }
        };
    }
    let mut security = Security::Sandbox;
    if let Some(u) = fl.get("security") {
        security = match u.value.value.as_str() {
            "sandbox" => Security::Sandbox,
            "insecure" => Security::Insecure,
            v => {
                cx.error(
                    "invalid-security",
                    u.span,
                    format!("security {} is not valid", crate::golang::quote(v)),
                    "use --security=sandbox or --security=insecure",
                );
                Security::Sandbox
            }
        };
    }
    let mut cache = None;
    if let Some(u) = fl.get("cache") {
        let v = u.value.value.as_str();
        let help = "use --cache=never, or --cache=ttl=<duration> such as ttl=1h30m or ttl=10s";
        if v == "never" {
            cache = Some(RunCache::Never { span: u.span });
        } else if let Some(d) = v.strip_prefix("ttl=") {
            match parse_go_duration(d) {
                Ok(n) if n > 0 => {
                    cache = Some(RunCache::Ttl {
                        nanos: n,
                        span: u.span,
                    })
                }
                Ok(n) => cx.error(
                    "invalid-cache",
                    u.span,
                    format!(
                        "--cache ttl must be positive, got {}",
                        format_go_duration(n)
                    ),
                    help,
                ),
                Err(e) => cx.error("invalid-cache", u.span, e, help),
            }
        } else {
            cx.error(
                "invalid-cache",
                u.span,
                format!("invalid value for --cache: {}", crate::golang::quote(v)),
                help,
            );
        }
    }
    Some(Run {
        span: node.span,
        command: command_line(node),
        mounts,
        network,
        security,
        cache,
        devices,
        flags_used: fl.used(),
    })
}

fn mount_help(raw: &str) -> String {
    let kind = raw
        .split(',')
        .find_map(|f| f.strip_prefix("type="))
        .unwrap_or("bind")
        .to_ascii_lowercase();
    let opts = match kind.as_str() {
        "cache" => "target, id, ro, sharing=shared|private|locked, from, source, mode, uid, gid",
        "tmpfs" => "target, size",
        "secret" => "id, target, env, required, mode, uid, gid",
        "ssh" => "id, target, required, mode, uid, gid",
        "bind" => "target, source, from, rw",
        _ => return "use type=bind, type=cache, type=tmpfs, type=secret or type=ssh".into(),
    };
    format!("write --mount=type={kind},<option>=<value>,…; {kind} mounts take: {opts}")
}

/// A single-line CSV record as Go's encoding/csv reads it (csvvalue.Fields).
fn csv_fields(line: &str) -> Result<Vec<String>, String> {
    let line = line
        .strip_suffix("\r\n")
        .or_else(|| line.strip_suffix('\n'))
        .unwrap_or(line);
    if line.is_empty() {
        return Err("EOF".into());
    }
    let err = |pos: usize, what: &str| format!("parse error on line 1, column {}: {what}", pos + 1);
    let bare = "bare \" in non-quoted-field";
    let quote = "extraneous or missing \" in quoted-field";
    let b = line.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        if b.get(i) != Some(&b'"') {
            let end = line[i..].find(',').map_or(line.len(), |e| i + e);
            let field = &line[i..end];
            if let Some(q) = field.find('"') {
                return Err(err(i + q, bare));
            }
            out.push(field.to_owned());
            if end == line.len() {
                return Ok(out);
            }
            i = end + 1;
            continue;
        }
        // Quoted field.
        i += 1;
        let mut field = String::new();
        loop {
            let Some(q) = line[i..].find('"') else {
                return Err(err(line.len(), quote));
            };
            field.push_str(&line[i..i + q]);
            i += q + 1;
            match b.get(i) {
                Some(b'"') => {
                    field.push('"');
                    i += 1;
                }
                Some(b',') => {
                    out.push(field);
                    i += 1;
                    break;
                }
                None => {
                    out.push(field);
                    return Ok(out);
                }
                Some(_) => return Err(err(i - 1, quote)),
            }
        }
        if i == line.len() {
            // A trailing comma after a quoted field: one more, empty, field.
            out.push(String::new());
            return Ok(out);
        }
    }
}

/// docker/go-units RAMInBytes: a number with an optional binary unit (k, kb, kib, m, …),
/// case-insensitive.
fn ram_in_bytes(s: &str) -> Option<i64> {
    let sep = s.rfind(|c: char| c.is_ascii_digit() || c == '.' || c == ' ')?;
    let (num, sfx) = if s.as_bytes()[sep] == b' ' {
        (&s[..sep], &s[sep + 1..])
    } else {
        (&s[..sep + 1], &s[sep + 1..])
    };
    let size: f64 = num.parse().ok()?;
    if size < 0.0 || !size.is_finite() {
        return None;
    }
    if sfx.is_empty() {
        return Some(size as i64);
    }
    if sfx.len() > 3 {
        return None;
    }
    let sfx = sfx.to_ascii_lowercase();
    let b = sfx.as_bytes();
    if b[0] == b'b' {
        return (sfx.len() == 1).then_some(size as i64);
    }
    let mul: f64 = match b[0] {
        b'k' => 1024.0,
        b'm' => 1024.0 * 1024.0,
        b'g' => 1024.0 * 1024.0 * 1024.0,
        b't' => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        b'p' => 1024.0 * 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    let ok = match sfx.len() {
        2 => b[1] == b'b',
        3 => &sfx[1..] == "ib",
        _ => true,
    };
    ok.then_some((size * mul) as i64)
}

const MOUNT_KEYS: &[&str] = &[
    "type",
    "from",
    "source",
    "target",
    "readonly",
    "id",
    "sharing",
    "required",
    "size",
    "mode",
    "uid",
    "gid",
    "src",
    "dst",
    "destination",
    "ro",
    "rw",
    "readwrite",
    "env",
];

/// An expander for [`parse_mount`]: the build's variable expansion of one value.
pub type Expander<'a> = &'a mut dyn FnMut(&str) -> Result<String, String>;

/// Parses the value of one `--mount` flag with BuildKit's rules and defaults.
///
/// Without an expander (the typed layer), a value that holds a variable or quotes is kept raw
/// (string fields) or left unset (numbers) and not checked, and `needs_expansion` is set; with
/// one (the planner), every value is expanded first and everything is checked. Returns the
/// mount and every problem found, in BuildKit's words.
pub fn parse_mount(value: &str, mut expand: Option<Expander>) -> (Mount, Vec<String>) {
    let mut m = Mount {
        raw: value.to_owned(),
        ..Mount::default()
    };
    let mut errors = Vec::new();
    let fields = match csv_fields(value) {
        Ok(f) => f,
        Err(e) => {
            errors.push(format!("failed to parse csv mounts: {e}"));
            return (m, errors);
        }
    };
    let mut ro_auto = true;
    let mut type_known = true;
    // mode/uid/gid given (even if not yet known because they hold a variable).
    let mut file_info = [false; 3];
    let mut secret_source_given = false;
    let mut secret_id_given = false;
    for field in &fields {
        let (key, val) = match field.split_once('=') {
            Some((k, v)) => (k.to_ascii_lowercase(), Some(v)),
            None => (field.to_ascii_lowercase(), None),
        };
        let Some(val) = val else {
            match key.as_str() {
                "readonly" | "ro" => {
                    m.read_only = true;
                    ro_auto = false;
                }
                "readwrite" | "rw" => {
                    m.read_only = false;
                    ro_auto = false;
                }
                "required" => {
                    if !type_known || matches!(m.kind, MountType::Secret | MountType::Ssh) {
                        m.required = true;
                    } else {
                        errors.push(format!(
                            "unexpected key '{key}' for mount type '{}'",
                            m.kind.as_str()
                        ));
                    }
                }
                _ => errors.push(format!("invalid field '{field}' must be a key=value pair")),
            }
            continue;
        };
        if key == "from" && val.find('$').is_some_and(|i| i != val.len() - 1) {
            errors.push(format!(
                "'{key}' doesn't support variable expansion, define alias stage instead"
            ));
            continue;
        }
        if !MOUNT_KEYS.contains(&key.as_str()) {
            let s = suggest(&key, MOUNT_KEYS.iter().copied(), true);
            errors.push(with_suggestion(
                format!("unexpected key '{key}' in '{field}'"),
                s.as_deref(),
            ));
            continue;
        }
        let (v, deferred) = match expand.as_mut() {
            Some(f) => match f(val) {
                Ok(v) => (v, false),
                Err(e) => {
                    errors.push(e);
                    continue;
                }
            },
            None => (val.to_owned(), needs_expansion(val)),
        };
        if deferred {
            m.needs_expansion = true;
            match key.as_str() {
                "type" => type_known = false,
                "from" => m.from = Some(v),
                "source" | "src" => {
                    secret_source_given = true;
                    m.source = Some(v);
                }
                "target" | "dst" | "destination" => m.target = Some(v),
                "id" => {
                    secret_id_given = true;
                    m.id = Some(v);
                }
                "env" => m.env = Some(v),
                "readonly" | "ro" | "readwrite" | "rw" => ro_auto = false,
                "mode" => file_info[0] = true,
                "uid" => file_info[1] = true,
                "gid" => file_info[2] = true,
                _ => {}
            }
            continue;
        }
        match key.as_str() {
            "type" => {
                let lower = v.to_ascii_lowercase();
                match MountType::ALL.iter().find(|t| t.as_str() == lower) {
                    Some(t) => {
                        m.kind = *t;
                        type_known = true;
                    }
                    None => {
                        let s = suggest(&v, MountType::ALL.iter().map(|t| t.as_str()), true);
                        errors.push(with_suggestion(
                            format!("unsupported mount type {}", crate::golang::quote(&v)),
                            s.as_deref(),
                        ));
                    }
                }
            }
            "from" => m.from = Some(v),
            "source" | "src" => {
                secret_source_given = !v.is_empty();
                m.source = Some(v);
            }
            "target" | "dst" | "destination" => m.target = Some(v),
            "readonly" | "ro" => {
                match parse_go_bool(&v) {
                    Some(b) => m.read_only = b,
                    None => errors.push(format!("invalid value for {key}: {v}")),
                }
                ro_auto = false;
            }
            "readwrite" | "rw" => {
                match parse_go_bool(&v) {
                    Some(b) => m.read_only = !b,
                    None => errors.push(format!("invalid value for {key}: {v}")),
                }
                ro_auto = false;
            }
            "required" => {
                if !type_known || matches!(m.kind, MountType::Secret | MountType::Ssh) {
                    match parse_go_bool(&v) {
                        Some(b) => m.required = b,
                        None => errors.push(format!("invalid value for {key}: {v}")),
                    }
                } else {
                    errors.push(format!(
                        "unexpected key '{key}' for mount type '{}'",
                        m.kind.as_str()
                    ));
                }
            }
            "size" => {
                if !type_known || m.kind == MountType::Tmpfs {
                    match ram_in_bytes(&v) {
                        Some(n) => m.size_limit = Some(n),
                        None => errors.push(format!("invalid value for {key}: {v}")),
                    }
                } else {
                    errors.push(format!(
                        "unexpected key '{key}' for mount type '{}'",
                        m.kind.as_str()
                    ));
                }
            }
            "id" => {
                secret_id_given = !v.is_empty();
                m.id = Some(v);
            }
            "sharing" => {
                let lower = v.to_ascii_lowercase();
                let all = [Sharing::Shared, Sharing::Private, Sharing::Locked];
                match all.iter().find(|s| s.as_str() == lower) {
                    Some(s) => m.sharing = Some(*s),
                    None => {
                        let s = suggest(&v, all.iter().map(|s| s.as_str()), true);
                        errors.push(with_suggestion(
                            format!("unsupported sharing value {}", crate::golang::quote(&v)),
                            s.as_deref(),
                        ));
                    }
                }
            }
            "mode" => {
                file_info[0] = true;
                match parse_go_u32(&v, 8) {
                    Some(n) => m.mode = Some(n),
                    None => errors.push(format!("invalid value {v} for mode")),
                }
            }
            "uid" => {
                file_info[1] = true;
                match parse_go_u32(&v, 10) {
                    Some(n) => m.uid = Some(n),
                    None => errors.push(format!("invalid value {v} for uid")),
                }
            }
            "gid" => {
                file_info[2] = true;
                match parse_go_u32(&v, 10) {
                    Some(n) => m.gid = Some(n),
                    None => errors.push(format!("invalid value {v} for gid")),
                }
            }
            "env" => m.env = Some(v),
            _ => {}
        }
    }
    if !type_known {
        return (m, errors);
    }
    let kind = m.kind.as_str();
    if !matches!(
        m.kind,
        MountType::Secret | MountType::Ssh | MountType::Cache
    ) {
        for (given, what) in file_info.iter().zip(["mode", "uid", "gid"]) {
            if *given {
                errors.push(format!("{what} not allowed for \"{kind}\" type mounts"));
            }
        }
    }
    if ro_auto {
        m.read_only = !matches!(m.kind, MountType::Cache | MountType::Tmpfs);
    }
    if m.kind == MountType::Secret {
        if m.from.as_deref().is_some_and(|f| !f.is_empty()) {
            errors.push("secret mount should not have a from".into());
        }
        if m.sharing.is_some() {
            errors.push("secret mount should not define sharing".into());
        }
        let target_given = m.target.as_deref().is_some_and(|t| !t.is_empty());
        if !secret_source_given && !target_given && !secret_id_given {
            errors.push("invalid secret mount. one of source, target required".into());
        }
        if secret_source_given && secret_id_given {
            errors.push("both source and id can't be set".into());
        }
    }
    if m.sharing.is_some() && m.kind != MountType::Cache {
        errors.push(format!("invalid cache sharing set for {kind} mount"));
    }
    if m.kind == MountType::Ssh && m.source.as_deref().is_some_and(|s| !s.is_empty()) {
        errors.push("ssh does not support source".into());
    }
    if m.target.as_deref() == Some("/") && !matches!(m.kind, MountType::Secret | MountType::Ssh) {
        errors.push("invalid mount target \"/\"".into());
    }
    (m, errors)
}

/// Parses the value of one `--device` flag (BuildKit's ParseDevice).
pub fn parse_device(value: &str) -> Result<Device, String> {
    let fields = csv_fields(value).map_err(|e| format!("failed to parse csv devices: {e}"))?;
    let mut d = Device {
        span: Span::default(),
        name: String::new(),
        required: false,
    };
    for field in &fields {
        let (key, val) = match field.split_once('=') {
            Some((k, v)) => (k.to_ascii_lowercase(), Some(v)),
            None => (field.to_ascii_lowercase(), None),
        };
        match (key.as_str(), val) {
            ("required", None) => d.required = true,
            (_, None) if d.name.is_empty() => d.name = field.clone(),
            (_, None) => return Err(format!("invalid field '{field}' must be a key=value pair")),
            ("name", Some(v)) => {
                if !d.name.is_empty() {
                    return Err(format!("device name already set to {}", d.name));
                }
                d.name = v.to_owned();
            }
            ("required", Some(v)) => {
                d.required =
                    parse_go_bool(v).ok_or_else(|| format!("invalid value for {key}: {v}"))?;
            }
            _ if d.name.is_empty() => d.name = field.clone(),
            _ => {
                let s = suggest(&key, ["name", "required"], true);
                return Err(with_suggestion(
                    format!("unexpected key '{key}' in '{field}'"),
                    s.as_deref(),
                ));
            }
        }
    }
    Ok(d)
}

/// A mount's `from` as a word (for stage-reference checks), when given.
pub(crate) fn mount_from(m: &Mount) -> Option<Word> {
    m.from.as_ref().map(|f| Word {
        value: f.clone(),
        span: m.span,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(v: &str) -> Mount {
        let (m, e) = parse_mount(v, None);
        assert!(e.is_empty(), "{v}: {e:?}");
        m
    }

    fn err(v: &str) -> Vec<String> {
        parse_mount(v, None).1
    }

    #[test]
    fn mount_defaults() {
        let m = ok("target=/x");
        assert_eq!((m.kind, m.read_only), (MountType::Bind, true));
        let m = ok("type=cache,target=/root/.cache,sharing=locked,mode=0700,uid=1000,gid=1000");
        assert_eq!(m.kind, MountType::Cache);
        assert!(!m.read_only);
        assert_eq!(m.sharing, Some(Sharing::Locked));
        assert_eq!(
            (m.mode, m.uid, m.gid),
            (Some(0o700), Some(1000), Some(1000))
        );
        let m = ok("type=tmpfs,dst=/t,size=64m");
        assert_eq!(m.size_limit, Some(64 << 20));
        let m = ok("type=secret,id=aws,env=AWS,required");
        assert!(m.required && m.read_only);
        assert_eq!(m.env.as_deref(), Some("AWS"));
        let m = ok("type=ssh");
        assert_eq!(m.kind, MountType::Ssh);
        let m = ok("type=bind,from=build,source=/out,target=/in,rw");
        assert!(!m.read_only);
        let m = ok("type=Cache,target=/c,ro=true");
        assert!(m.read_only);
    }

    #[test]
    fn mount_errors_use_buildkit_words() {
        assert_eq!(
            err("type=bnid"),
            ["unsupported mount type \"bnid\" (did you mean bind?)"]
        );
        assert_eq!(
            err("type=cache,sharing=privat,target=/x"),
            ["unsupported sharing value \"privat\" (did you mean private?)"]
        );
        assert_eq!(
            err("type=bind,required"),
            ["unexpected key 'required' for mount type 'bind'"]
        );
        assert_eq!(
            err("type=cache,size=1g,target=/x"),
            ["unexpected key 'size' for mount type 'cache'"]
        );
        assert_eq!(
            err("target=/x,zzzz=bar"),
            ["unexpected key 'zzzz' in 'zzzz=bar'"]
        );
        assert_eq!(
            err("target=/x,trget=/y"),
            ["unexpected key 'trget' in 'trget=/y' (did you mean target?)"]
        );
        assert_eq!(
            err("target=/x,bogus"),
            ["invalid field 'bogus' must be a key=value pair"]
        );
        assert_eq!(
            err("type=bind,target=/x,mode=0755"),
            ["mode not allowed for \"bind\" type mounts"]
        );
        assert_eq!(
            err("type=cache,target=/x,mode=999"),
            ["invalid value 999 for mode"]
        );
        assert_eq!(
            err("type=secret"),
            ["invalid secret mount. one of source, target required"]
        );
        assert_eq!(
            err("type=secret,id=a,source=b,from=x"),
            [
                "secret mount should not have a from",
                "both source and id can't be set"
            ]
        );
        assert_eq!(
            err("type=tmpfs,target=/x,sharing=shared"),
            ["invalid cache sharing set for tmpfs mount"]
        );
        assert_eq!(
            err("type=tmpfs,target=/x,size=lots"),
            ["invalid value for size: lots"]
        );
        assert_eq!(
            err("from=$STAGE,target=/x"),
            ["'from' doesn't support variable expansion, define alias stage instead"]
        );
        assert_eq!(err(""), ["failed to parse csv mounts: EOF"]);
        assert_eq!(
            err("target=/a\"b"),
            [
                "failed to parse csv mounts: parse error on line 1, column 10: bare \" in non-quoted-field"
            ]
        );
    }

    #[test]
    fn variables_are_deferred_then_checked() {
        let (m, e) = parse_mount("type=cache,target=$DIR,mode=$MODE", None);
        assert!(e.is_empty(), "{e:?}");
        assert!(m.needs_expansion);
        assert_eq!(m.target.as_deref(), Some("$DIR"));
        assert_eq!(m.mode, None);
        let mut env = |s: &str| -> Result<String, String> {
            Ok(s.replace("$DIR", "/cache").replace("$MODE", "0700"))
        };
        let (m, e) = parse_mount("type=cache,target=$DIR,mode=$MODE", Some(&mut env));
        assert!(e.is_empty(), "{e:?}");
        assert_eq!((m.target.as_deref(), m.mode), (Some("/cache"), Some(0o700)));
        let mut bad = |s: &str| -> Result<String, String> { Ok(s.replace("$T", "bind")) };
        let (_, e) = parse_mount("type=$T,target=/x,uid=1", Some(&mut bad));
        assert_eq!(e, ["uid not allowed for \"bind\" type mounts"]);
    }

    #[test]
    fn csv_quotes() {
        assert_eq!(
            csv_fields("\"a,b\",c").unwrap(),
            vec!["a,b".to_string(), "c".into()]
        );
        assert_eq!(csv_fields("\"a\"\"b\"").unwrap(), vec!["a\"b".to_string()]);
        assert!(csv_fields("\"ab").is_err());
        assert_eq!(ram_in_bytes("1k"), Some(1024));
        assert_eq!(ram_in_bytes("1KiB"), Some(1024));
        assert_eq!(ram_in_bytes("2 MB"), Some(2 << 20));
        assert_eq!(ram_in_bytes("100"), Some(100));
        assert_eq!(ram_in_bytes("1x"), None);
        assert_eq!(ram_in_bytes("-1"), None);
    }

    #[test]
    fn devices() {
        let d = parse_device("vendor.com/gpu=all,required").unwrap();
        assert_eq!((d.name.as_str(), d.required), ("vendor.com/gpu=all", true));
        let d = parse_device("name=x,required=false").unwrap();
        assert_eq!((d.name.as_str(), d.required), ("x", false));
        assert_eq!(
            parse_device("a,name=b").unwrap_err(),
            "device name already set to a"
        );
    }
}
