//! Policy text: the shape check that bounds what Cedar's parser sees, the
//! parsing of tenant and default policy sets, and what a set reads.

use super::*;

/// The parts of the context a tenant's policies read. Only those are built
/// per decision: a Cedar decimal costs about 5 µs to construct (its name is
/// parsed each time), several times a whole decision. Keel's defaults read
/// none of them.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Reads {
    /// `None`: no argument; `Some(empty)`: all of them; otherwise these names.
    pub(crate) args: Option<HashSet<String>>,
    pub(crate) today: bool,
    pub(crate) now: bool,
}

impl Reads {
    pub(crate) fn of(text: &str) -> Self {
        let mut args: Option<HashSet<String>> = None;
        let mut all = false;
        for (at, _) in text.match_indices("context.args") {
            let names = args.get_or_insert_with(HashSet::new);
            let rest = &text[at + "context.args".len()..];
            let name: String = rest.strip_prefix('.').unwrap_or("").chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            // `context.args has x`, `context.args["x"]`, the record itself: build every argument.
            all |= name.is_empty();
            names.insert(name);
        }
        if all || text.contains("\"args\"") {
            args = Some(HashSet::new());
        }
        Self { args, today: text.contains("today"), now: text.contains("now") }
    }

    pub(crate) fn arg(&self, name: &str) -> bool {
        self.args.as_ref().is_some_and(|a| a.is_empty() || a.contains(name))
    }
}

/// Checks what reaches Cedar's parser before it runs: size, bracket nesting,
/// `if` expressions and arithmetic, counted outside strings and comments.
pub fn check_policy_shape(text: &str) -> Result<(), KeelError> {
    if text.len() > MAX_POLICY_BYTES {
        return Err(KeelError::PayloadTooLarge(format!("policies exceed {MAX_POLICY_BYTES} bytes")));
    }
    let bad = |m: String| Err(KeelError::BadRequest(format!("invalid Cedar policies: {m}")));
    let (mut depth, mut deepest, mut ifs, mut arithmetic) = (0usize, 0usize, 0usize, 0usize);
    let mut chars = text.char_indices().peekable();
    let mut word = String::new();
    while let Some((_, c)) = chars.next() {
        if c.is_alphanumeric() || c == '_' {
            word.push(c);
            continue;
        }
        ifs += usize::from(word == "if");
        word.clear();
        match c {
            '"' => skip_string(&mut chars),
            '/' if chars.peek().is_some_and(|(_, n)| *n == '/') => {
                for (_, n) in chars.by_ref() {
                    if n == '\n' {
                        break;
                    }
                }
            }
            '(' | '[' | '{' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            '+' | '-' | '*' => arithmetic += 1,
            _ => {}
        }
    }
    ifs += usize::from(word == "if");
    if deepest > MAX_POLICY_NESTING {
        return bad(format!("brackets nest {deepest} levels deep; the limit is {MAX_POLICY_NESTING}"));
    }
    if ifs > MAX_POLICY_NESTING {
        return bad(format!("{ifs} if-expressions; the limit is {MAX_POLICY_NESTING}"));
    }
    if arithmetic > MAX_POLICY_ARITHMETIC {
        return bad(format!("{arithmetic} arithmetic operators; the limit is {MAX_POLICY_ARITHMETIC}"));
    }
    Ok(())
}

/// Moves past a string literal (its opening quote already read).
fn skip_string(chars: &mut std::iter::Peekable<std::str::CharIndices<'_>>) {
    let mut escaped = false;
    for (_, c) in chars.by_ref() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => return,
            _ => {}
        }
    }
}

/// Parses policy text on a thread with a stack of its own (see `PARSER_STACK_BYTES`).
fn parse_policy_set(text: &str) -> Result<PolicySet, KeelError> {
    let owned = text.to_string();
    let parser = std::thread::Builder::new()
        .name("cedar-parser".into())
        .stack_size(PARSER_STACK_BYTES)
        .spawn(move || PolicySet::from_str(&owned).map_err(|e| format!("{e:?}")))
        .map_err(|e| KeelError::Internal(format!("cedar parser thread: {e}")))?;
    let parsed = parser.join().map_err(|_| KeelError::Internal("the Cedar parser failed".into()))?;
    parsed.map_err(|e| KeelError::BadRequest(format!("invalid Cedar policies: {e}")))
}

/// Parses tenant policy text: every policy needs a unique `@id`, and none may
/// reuse a default's.
pub fn parse_tenant_policies(text: &str) -> Result<PolicySet, KeelError> {
    let bad = |m: String| KeelError::BadRequest(format!("invalid Cedar policies: {m}"));
    check_policy_shape(text)?;
    let parsed = parse_policy_set(text)?;
    let defaults = PolicySet::from_str(DEFAULT_POLICIES).map_err(|e| KeelError::Internal(format!("default policies: {e}")))?;
    let default_ids: HashSet<&str> = defaults.policies().filter_map(|p| p.annotation("id")).collect();
    let mut seen = HashSet::new();
    for p in parsed.policies() {
        let id = p.annotation("id").ok_or_else(|| bad(format!("every policy needs an @id(\"...\"): {}", p)))?;
        if default_ids.contains(id) || !seen.insert(id.to_string()) {
            return Err(bad(format!("@id {id:?} is used twice (Keel's defaults included)")));
        }
    }
    Ok(parsed)
}

/// Keel's defaults plus tenant texts, renumbered so ids never collide (the
/// `@id` annotations are what decisions report).
pub(crate) fn with_defaults(texts: &[&str]) -> Result<PolicySet, KeelError> {
    let defaults = PolicySet::from_str(DEFAULT_POLICIES).map_err(|e| KeelError::Internal(format!("invalid default policies: {e}")))?;
    let mut parts = vec![defaults];
    for text in texts.iter().filter(|t| !t.trim().is_empty()) {
        parts.push(parse_tenant_policies(text)?);
    }
    let mut set = PolicySet::new();
    for p in parts.iter().flat_map(PolicySet::policies) {
        let id = PolicyId::new(format!("p{}", set.policies().count()));
        set.add(p.new_id(id)).map_err(|e| KeelError::Internal(format!("policy set: {e}")))?;
    }
    Ok(set)
}
