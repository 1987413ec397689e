//! Request parameters: from the decoded form (body or query string) to one typed value per
//! operation, checked the way Stripe checks them.
//!
//! The names each operation accepts are those of `identity-openapi.json` (the tests hold the
//! lists here against that file). Everything that can be refused without looking at a session is
//! refused here, before any state is touched, so such failures are never stored for idempotency.
//! Checks that need a session (its status, the merged metadata size) live in `session`.

use serde_json::{Map, Value};

use super::error::ApiError;
use super::session::{SessionType, Status};

/// Top-level parameters of `POST /v1/identity/verification_sessions`.
pub const CREATE_PARAMS: &[&str] = &[
    "client_reference_id",
    "expand",
    "metadata",
    "options",
    "provided_details",
    "related_customer",
    "related_customer_account",
    "related_person",
    "return_url",
    "type",
    "verification_flow",
];
/// Top-level parameters of `POST /v1/identity/verification_sessions/{session}`.
pub const UPDATE_PARAMS: &[&str] = &["expand", "metadata", "options", "provided_details", "type"];
/// Parameters of retrieve, cancel and redact.
pub const EXPAND_ONLY_PARAMS: &[&str] = &["expand"];
/// Query parameters of `GET /v1/identity/verification_sessions`.
pub const LIST_PARAMS: &[&str] = &[
    "client_reference_id",
    "created",
    "ending_before",
    "expand",
    "limit",
    "related_customer",
    "related_customer_account",
    "starting_after",
    "status",
];
/// Keys of `options` (`session_options_param`).
pub const OPTIONS_PARAMS: &[&str] = &["document"];
/// Keys of `options[document]` (`document_options`).
pub const DOCUMENT_PARAMS: &[&str] = &[
    "allowed_types",
    "require_id_number",
    "require_live_capture",
    "require_matching_selfie",
];
/// Keys of `provided_details` (`provided_details_param`).
pub const PROVIDED_DETAILS_PARAMS: &[&str] = &["email", "phone"];
/// Keys of `related_person` (`related_person_param`).
pub const RELATED_PERSON_PARAMS: &[&str] = &["account", "person"];
/// Keys of `created` (`range_query_specs`).
pub const CREATED_PARAMS: &[&str] = &["gt", "gte", "lt", "lte"];
/// `options[document][allowed_types][]` values.
pub const DOCUMENT_TYPES: &[&str] = &["driving_license", "id_card", "passport"];

/// The longest string the response schema lets the stand-in echo (`maxLength: 5000`).
const MAX_STRING: usize = 5000;
const MAX_METADATA_KEY: usize = 40;
const MAX_METADATA_VALUE: usize = 500;
pub const MAX_METADATA_KEYS: usize = 50;
/// Stripe refuses expansions deeper than this many levels.
const MAX_EXPAND_DEPTH: usize = 4;

/// A change to one optional field: Stripe's empty value unsets, a missing key keeps.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Patch<T> {
    #[default]
    Keep,
    Unset,
    Set(T),
}

impl<T> Patch<T> {
    pub fn apply(self, slot: &mut Option<T>) {
        match self {
            Patch::Keep => {}
            Patch::Unset => *slot = None,
            Patch::Set(value) => *slot = Some(value),
        }
    }
}

/// `metadata` as sent: `metadata=` clears, `metadata[k]=` deletes `k`, others merge.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum MetadataChange {
    #[default]
    Keep,
    Clear,
    Merge(Vec<(String, Option<String>)>),
}

/// `options[document][...]`, each key patched on its own.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DocumentPatch {
    pub allowed_types: Patch<Vec<String>>,
    pub require_id_number: Patch<bool>,
    pub require_live_capture: Patch<bool>,
    pub require_matching_selfie: Patch<bool>,
}

/// `provided_details[...]`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DetailsPatch {
    pub email: Patch<String>,
    pub phone: Patch<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelatedPerson {
    pub account: String,
    pub person: String,
}

/// Validated `expand[]` paths, relative to the session (a list's `data.` prefix removed).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expand {
    paths: Vec<String>,
}

impl Expand {
    /// Expands everything the stand-in can fill, as the `/_sim` controls show a session.
    pub fn everything() -> Self {
        Expand {
            paths: vec![
                "verified_outputs.dob".into(),
                "verified_outputs.id_number".into(),
            ],
        }
    }

    /// Whether `path` or anything below it was asked for.
    pub fn covers(&self, path: &str) -> bool {
        self.paths.iter().any(|p| {
            p == path
                || p.strip_prefix(path)
                    .is_some_and(|rest| rest.starts_with('.'))
        })
    }

    /// Whether exactly `path` was asked for.
    pub fn has(&self, path: &str) -> bool {
        self.paths.iter().any(|p| p == path)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateParams {
    pub kind: Option<SessionType>,
    pub verification_flow: Option<String>,
    pub client_reference_id: Option<String>,
    pub metadata: MetadataChange,
    pub document: Patch<DocumentPatch>,
    pub provided_details: Patch<DetailsPatch>,
    pub related_customer: Option<String>,
    pub related_customer_account: Option<String>,
    pub related_person: Option<RelatedPerson>,
    pub return_url: Option<String>,
    pub expand: Expand,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateParams {
    pub kind: Option<SessionType>,
    pub metadata: MetadataChange,
    pub document: Patch<DocumentPatch>,
    pub provided_details: Patch<DetailsPatch>,
    pub expand: Expand,
}

/// A page boundary: at most one of `starting_after` and `ending_before`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cursor {
    StartingAfter(String),
    EndingBefore(String),
}

/// `created=<t>` or `created[gt|gte|lt|lte]=<t>`; an exact time sets both bounds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CreatedFilter {
    pub gt: Option<i64>,
    pub gte: Option<i64>,
    pub lt: Option<i64>,
    pub lte: Option<i64>,
}

impl CreatedFilter {
    pub fn matches(&self, created: i64) -> bool {
        self.gt.is_none_or(|t| created > t)
            && self.gte.is_none_or(|t| created >= t)
            && self.lt.is_none_or(|t| created < t)
            && self.lte.is_none_or(|t| created <= t)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListParams {
    pub limit: usize,
    pub cursor: Option<Cursor>,
    pub created: CreatedFilter,
    pub status: Option<Status>,
    pub client_reference_id: Option<String>,
    pub related_customer: Option<String>,
    pub related_customer_account: Option<String>,
    pub expand: Expand,
}

pub fn create(form: &Map<String, Value>) -> Result<CreateParams, ApiError> {
    known(form, CREATE_PARAMS, None)?;
    let kind = match optional_string(form, "type")? {
        None => None,
        Some(text) => Some(request_type(text)?),
    };
    let verification_flow = optional_string(form, "verification_flow")?.map(str::to_owned);
    if kind.is_none() && verification_flow.is_none() {
        return Err(ApiError::missing_parameter("type"));
    }
    let related_person = match form.get("related_person") {
        None => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::Object(person)) => {
            known(person, RELATED_PERSON_PARAMS, Some("related_person"))?;
            let field = |name: &str| -> Result<String, ApiError> {
                let param = format!("related_person[{name}]");
                match person.get(name) {
                    Some(value) => match string(value, &param)? {
                        "" => Err(ApiError::empty_parameter(param)),
                        text => Ok(text.to_owned()),
                    },
                    None => Err(ApiError::missing_parameter(param)),
                }
            };
            Some(RelatedPerson {
                account: field("account")?,
                person: field("person")?,
            })
        }
        Some(_) => return Err(invalid_object("related_person")),
    };
    Ok(CreateParams {
        kind,
        verification_flow,
        client_reference_id: optional_string(form, "client_reference_id")?.map(str::to_owned),
        metadata: metadata(form.get("metadata"))?,
        document: options(form.get("options"))?,
        provided_details: provided_details(form.get("provided_details"))?,
        related_customer: optional_string(form, "related_customer")?.map(str::to_owned),
        related_customer_account: optional_string(form, "related_customer_account")?
            .map(str::to_owned),
        related_person,
        return_url: optional_string(form, "return_url")?.map(str::to_owned),
        expand: expand(form.get("expand"), false)?,
    })
}

pub fn update(form: &Map<String, Value>) -> Result<UpdateParams, ApiError> {
    known(form, UPDATE_PARAMS, None)?;
    let kind = match form.get("type") {
        None => None,
        Some(value) => match string(value, "type")? {
            "" => return Err(ApiError::empty_parameter("type")),
            text => Some(request_type(text)?),
        },
    };
    Ok(UpdateParams {
        kind,
        metadata: metadata(form.get("metadata"))?,
        document: options(form.get("options"))?,
        provided_details: provided_details(form.get("provided_details"))?,
        expand: expand(form.get("expand"), false)?,
    })
}

/// Retrieve, cancel and redact take nothing but `expand`.
pub fn expand_only(form: &Map<String, Value>) -> Result<Expand, ApiError> {
    known(form, EXPAND_ONLY_PARAMS, None)?;
    expand(form.get("expand"), false)
}

pub fn list(form: &Map<String, Value>) -> Result<ListParams, ApiError> {
    known(form, LIST_PARAMS, None)?;
    let limit = match optional_string(form, "limit")? {
        None => 10,
        Some(text) => {
            let limit = integer(text, "limit")?;
            if limit < 1 {
                return Err(ApiError::invalid(
                    "limit",
                    format!(
                        "This value must be greater than or equal to 1 (it currently is '{limit}')."
                    ),
                ));
            }
            if limit > 100 {
                return Err(ApiError::invalid(
                    "limit",
                    format!(
                        "This value must be less than or equal to 100 (it currently is '{limit}')."
                    ),
                ));
            }
            usize::try_from(limit).unwrap_or(10)
        }
    };
    let starting_after = optional_string(form, "starting_after")?;
    let ending_before = optional_string(form, "ending_before")?;
    let cursor = match (starting_after, ending_before) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid(
                "ending_before",
                "You may only specify one of these parameters: ending_before, starting_after.",
            ));
        }
        (Some(id), None) => Some(Cursor::StartingAfter(id.to_owned())),
        (None, Some(id)) => Some(Cursor::EndingBefore(id.to_owned())),
        (None, None) => None,
    };
    let created = match form.get("created") {
        None => CreatedFilter::default(),
        Some(Value::String(text)) if text.is_empty() => CreatedFilter::default(),
        Some(Value::String(text)) => {
            let at = integer(text, "created")?;
            CreatedFilter {
                gte: Some(at),
                lte: Some(at),
                ..CreatedFilter::default()
            }
        }
        Some(Value::Object(range)) => {
            known(range, CREATED_PARAMS, Some("created"))?;
            let bound = |name: &str| -> Result<Option<i64>, ApiError> {
                let param = format!("created[{name}]");
                match range.get(name) {
                    None => Ok(None),
                    Some(value) => match string(value, &param)? {
                        "" => Ok(None),
                        text => integer(text, &param).map(Some),
                    },
                }
            };
            CreatedFilter {
                gt: bound("gt")?,
                gte: bound("gte")?,
                lt: bound("lt")?,
                lte: bound("lte")?,
            }
        }
        Some(other) => return Err(ApiError::invalid_integer("created", &compact(other))),
    };
    let status = match optional_string(form, "status")? {
        None => None,
        Some(text) => {
            Some(Status::parse(text).ok_or_else(|| ApiError::invalid_enum("status", Status::ALL))?)
        }
    };
    Ok(ListParams {
        limit,
        cursor,
        created,
        status,
        client_reference_id: optional_string(form, "client_reference_id")?.map(str::to_owned),
        related_customer: optional_string(form, "related_customer")?.map(str::to_owned),
        related_customer_account: optional_string(form, "related_customer_account")?
            .map(str::to_owned),
        expand: expand(form.get("expand"), true)?,
    })
}

/// Refuses the first key of `form` not in `allowed`, named as Stripe names nested parameters.
fn known(
    form: &Map<String, Value>,
    allowed: &[&str],
    parent: Option<&str>,
) -> Result<(), ApiError> {
    match form.keys().find(|key| !allowed.contains(&key.as_str())) {
        None => Ok(()),
        Some(key) => Err(ApiError::unknown_parameter(match parent {
            Some(parent) => format!("{parent}[{key}]"),
            None => key.clone(),
        })),
    }
}

/// `type` on create and update: only `document` and `id_number` may be asked for.
fn request_type(text: &str) -> Result<SessionType, ApiError> {
    match SessionType::parse(text) {
        Some(kind @ (SessionType::Document | SessionType::IdNumber)) => Ok(kind),
        _ => Err(ApiError::invalid_enum("type", &["document", "id_number"])),
    }
}

/// A string parameter; an empty value (Stripe's "unset") reads as absent.
fn optional_string<'a>(
    form: &'a Map<String, Value>,
    name: &str,
) -> Result<Option<&'a str>, ApiError> {
    match form.get(name) {
        None => Ok(None),
        Some(value) => match string(value, name)? {
            "" => Ok(None),
            text => Ok(Some(text)),
        },
    }
}

fn string<'a>(value: &'a Value, param: &str) -> Result<&'a str, ApiError> {
    match value {
        Value::String(text) if text.chars().count() > MAX_STRING => Err(ApiError::invalid(
            param,
            format!(
                "Invalid string: {}...; must be at most {MAX_STRING} characters",
                prefix(text, 30)
            ),
        )),
        Value::String(text) => Ok(text),
        other => Err(ApiError::invalid(
            param,
            format!("Invalid string: {}", compact(other)),
        )),
    }
}

fn boolean(value: &Value, param: &str) -> Result<Patch<bool>, ApiError> {
    match string(value, param)? {
        "" => Ok(Patch::Unset),
        "true" => Ok(Patch::Set(true)),
        "false" => Ok(Patch::Set(false)),
        other => Err(ApiError::invalid(
            param,
            format!("Invalid boolean: {}", prefix(other, 100)),
        )),
    }
}

fn integer(text: &str, param: &str) -> Result<i64, ApiError> {
    text.parse::<i64>()
        .map_err(|_| ApiError::invalid_integer(param, &prefix(text, 100)))
}

fn invalid_object(param: &str) -> ApiError {
    ApiError::invalid(param, "Invalid object")
}

fn metadata(value: Option<&Value>) -> Result<MetadataChange, ApiError> {
    let entries = match value {
        None => return Ok(MetadataChange::Keep),
        Some(Value::String(text)) if text.is_empty() => return Ok(MetadataChange::Clear),
        Some(Value::Object(entries)) => entries,
        Some(_) => return Err(invalid_object("metadata")),
    };
    let mut merge = Vec::with_capacity(entries.len());
    for (key, value) in entries {
        let param = format!("metadata[{key}]");
        if key.chars().count() > MAX_METADATA_KEY {
            return Err(ApiError::invalid(
                param,
                format!(
                    "Invalid metadata key '{key}': keys can be at most {MAX_METADATA_KEY} characters"
                ),
            ));
        }
        let text = match value {
            Value::String(text) => text,
            other => {
                return Err(ApiError::invalid(
                    param,
                    format!("Invalid string: {}", compact(other)),
                ));
            }
        };
        if text.chars().count() > MAX_METADATA_VALUE {
            return Err(ApiError::invalid(
                param,
                format!(
                    "Invalid value for metadata key '{key}': values can be at most \
                     {MAX_METADATA_VALUE} characters"
                ),
            ));
        }
        merge.push((key.clone(), (!text.is_empty()).then(|| text.clone())));
    }
    if merge.iter().filter(|(_, value)| value.is_some()).count() > MAX_METADATA_KEYS {
        return Err(ApiError::invalid(
            "metadata",
            format!(
                "Invalid metadata: an object can have at most {MAX_METADATA_KEYS} metadata keys"
            ),
        ));
    }
    Ok(MetadataChange::Merge(merge))
}

/// `options`: only `options[document]` exists in the request schema, so clearing `options`
/// and clearing `options[document]` are the same change.
fn options(value: Option<&Value>) -> Result<Patch<DocumentPatch>, ApiError> {
    let options = match value {
        None => return Ok(Patch::Keep),
        Some(Value::String(text)) if text.is_empty() => return Ok(Patch::Unset),
        Some(Value::Object(options)) => options,
        Some(_) => return Err(invalid_object("options")),
    };
    known(options, OPTIONS_PARAMS, Some("options"))?;
    let document = match options.get("document") {
        None => return Ok(Patch::Keep),
        Some(Value::String(text)) if text.is_empty() => return Ok(Patch::Unset),
        Some(Value::Object(document)) => document,
        Some(_) => return Err(invalid_object("options[document]")),
    };
    known(document, DOCUMENT_PARAMS, Some("options[document]"))?;
    let mut patch = DocumentPatch::default();
    if let Some(value) = document.get("allowed_types") {
        let param = "options[document][allowed_types]";
        patch.allowed_types = match value {
            Value::String(text) if text.is_empty() => Patch::Unset,
            Value::Array(items) => {
                let mut types = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    let item_param = format!("{param}[{i}]");
                    let text = string(item, &item_param)?;
                    if !DOCUMENT_TYPES.contains(&text) {
                        return Err(ApiError::invalid_enum(item_param, DOCUMENT_TYPES));
                    }
                    if !types.iter().any(|t| t == text) {
                        types.push(text.to_owned());
                    }
                }
                Patch::Set(types)
            }
            _ => return Err(ApiError::invalid(param, "Invalid array")),
        };
    }
    for (name, slot) in [
        ("require_id_number", &mut patch.require_id_number),
        ("require_live_capture", &mut patch.require_live_capture),
        (
            "require_matching_selfie",
            &mut patch.require_matching_selfie,
        ),
    ] {
        if let Some(value) = document.get(name) {
            *slot = boolean(value, &format!("options[document][{name}]"))?;
        }
    }
    Ok(Patch::Set(patch))
}

fn provided_details(value: Option<&Value>) -> Result<Patch<DetailsPatch>, ApiError> {
    let details = match value {
        None => return Ok(Patch::Keep),
        Some(Value::String(text)) if text.is_empty() => return Ok(Patch::Unset),
        Some(Value::Object(details)) => details,
        Some(_) => return Err(invalid_object("provided_details")),
    };
    known(details, PROVIDED_DETAILS_PARAMS, Some("provided_details"))?;
    let field = |name: &str| -> Result<Patch<String>, ApiError> {
        match details.get(name) {
            None => Ok(Patch::Keep),
            Some(value) => match string(value, &format!("provided_details[{name}]"))? {
                "" => Ok(Patch::Unset),
                text => Ok(Patch::Set(text.to_owned())),
            },
        }
    };
    Ok(Patch::Set(DetailsPatch {
        email: field("email")?,
        phone: field("phone")?,
    }))
}

/// The fields below each expandable path of a session (the `x-expandableFields` of each
/// schema), plus `verified_outputs.id_number`, which Stripe asks to be expanded like `dob`.
fn expandable(parent: &[&str]) -> &'static [&'static str] {
    match parent {
        [] => &[
            "last_error",
            "last_verification_report",
            "options",
            "provided_details",
            "redaction",
            "related_person",
            "verified_outputs",
        ],
        ["verified_outputs"] => &["address", "dob", "id_number"],
        ["last_verification_report"] => &[
            "document",
            "email",
            "id_number",
            "options",
            "phone",
            "selfie",
        ],
        ["last_verification_report", "document"] => {
            &["address", "dob", "error", "expiration_date", "issued_date"]
        }
        ["last_verification_report", "id_number"] => &["dob", "error"],
        ["last_verification_report", "email" | "phone" | "selfie"] => &["error"],
        ["last_verification_report", "options"] => &["document", "id_number"],
        ["options"] => &["document", "email", "id_number", "matching", "phone"],
        _ => &[],
    }
}

/// `expand[]`: at most four levels, each one expandable; on lists every path starts with `data`.
fn expand(value: Option<&Value>, on_list: bool) -> Result<Expand, ApiError> {
    let items = match value {
        None => return Ok(Expand::default()),
        Some(Value::String(text)) if text.is_empty() => return Ok(Expand::default()),
        Some(Value::Array(items)) => items,
        Some(_) => return Err(ApiError::invalid("expand", "Invalid array")),
    };
    let mut paths = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let path = string(item, &format!("expand[{i}]"))?;
        let segments: Vec<&str> = path.split('.').collect();
        if segments.len() > MAX_EXPAND_DEPTH {
            return Err(ApiError::invalid(
                format!("expand[{i}]"),
                format!(
                    "You cannot expand more than {MAX_EXPAND_DEPTH} levels of a property ({path})."
                ),
            ));
        }
        let relative = if on_list {
            match segments.split_first() {
                Some((&"data", rest)) => rest,
                _ => return Err(cannot_expand(segments.first().copied().unwrap_or(path))),
            }
        } else {
            &segments[..]
        };
        for depth in 0..relative.len() {
            if !expandable(&relative[..depth]).contains(&relative[depth]) {
                let offset = usize::from(on_list);
                return Err(cannot_expand(&segments[..=depth + offset].join(".")));
            }
        }
        if !relative.is_empty() {
            paths.push(relative.join("."));
        }
    }
    Ok(Expand { paths })
}

fn cannot_expand(path: &str) -> ApiError {
    ApiError::bad_request(format!("This property cannot be expanded ({path})."))
}

/// A value as short JSON for a message.
fn compact(value: &Value) -> String {
    prefix(&value.to_string(), 100)
}

/// The first `n` characters of `text`, so messages stay short whatever a client sends.
fn prefix(text: &str, n: usize) -> String {
    text.chars().take(n).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn form(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }

    #[test]
    fn expand_paths_are_checked_level_by_level() {
        let ok = expand_only(&form(
            json!({"expand": ["verified_outputs.dob", "last_verification_report.document.error"]}),
        ))
        .expect("valid paths");
        assert!(ok.covers("verified_outputs"));
        assert!(ok.has("verified_outputs.dob"));
        assert!(ok.covers("last_verification_report"));
        let bad = expand_only(&form(json!({"expand": ["verified_outputs.foo"]}))).unwrap_err();
        assert_eq!(
            bad.message,
            "This property cannot be expanded (verified_outputs.foo)."
        );
        let deep = expand_only(&form(json!({"expand": ["a.b.c.d.e"]}))).unwrap_err();
        assert_eq!(deep.status, 400);
        let list_bad = list(&form(json!({"expand": ["verified_outputs"]}))).unwrap_err();
        assert_eq!(
            list_bad.message,
            "This property cannot be expanded (verified_outputs)."
        );
        let list_ok = list(&form(json!({"expand": ["data.verified_outputs"]}))).expect("valid");
        assert!(list_ok.expand.covers("verified_outputs"));
    }

    #[test]
    fn created_takes_an_integer_or_a_range() {
        let exact = list(&form(json!({"created": "5"}))).expect("valid");
        assert!(exact.created.matches(5) && !exact.created.matches(6));
        let range = list(&form(json!({"created": {"gt": "5", "lte": "7"}}))).expect("valid");
        assert!(!range.created.matches(5) && range.created.matches(7) && !range.created.matches(8));
        let bad = list(&form(json!({"created": {"after": "5"}}))).unwrap_err();
        assert_eq!(bad.param.as_deref(), Some("created[after]"));
    }

    #[test]
    fn empty_values_unset_and_nested_unknowns_are_named() {
        let update = update(&form(
            json!({"metadata": {"a": "", "b": "x"}, "options": {"document": ""}}),
        ))
        .expect("valid");
        assert_eq!(
            update.metadata,
            MetadataChange::Merge(vec![("a".into(), None), ("b".into(), Some("x".into()))])
        );
        assert_eq!(update.document, Patch::Unset);
        let bad = create(&form(
            json!({"type": "document", "options": {"document": {"color": "red"}}}),
        ))
        .unwrap_err();
        assert_eq!(bad.param.as_deref(), Some("options[document][color]"));
    }
}
