//! The VerificationSession: its stored state, its lifecycle and its JSON shape.
//!
//! A [`Session`] holds what the stand-in knows about one `identity.verification_session`;
//! [`Session::render`] turns it into the object of `identity-openapi.json`, field for field,
//! honouring `expand[]` and the key that asks. The lifecycle, including the steps only the
//! `/_sim` controls take:
//!
//! ```text
//!             create
//!               |
//!               v
//!   +----> requires_input ---cancel / redact---> canceled
//!   |        |        ^                             |
//!   |  /processing   /requires_input (last_error)  redact
//!   |        v        |                             |
//!   |     processing -+                             v
//!   |        |                           redaction: processing --/redacted--> redacted
//!   |    /verified                                  ^
//!   |        v                                      |
//!   +---- verified ---------------redact------------+
//! ```
//!
//! Sockets, idempotency and the session table live elsewhere (`http`, `store`).

use rand::Rng;
use rand::distr::Alphanumeric;
use serde_json::{Map, Value, json};

use super::error::ApiError;
use super::params::{
    CreateParams, DetailsPatch, DocumentPatch, Expand, MAX_METADATA_KEYS, MetadataChange, Patch,
    RelatedPerson, UpdateParams,
};

/// `length` random base62 characters after `prefix`, as in Stripe's ids.
pub fn random_id(prefix: &str, length: usize) -> String {
    let mut id = String::with_capacity(prefix.len() + length);
    id.push_str(prefix);
    id.extend(
        rand::rng()
            .sample_iter(&Alphanumeric)
            .take(length)
            .map(char::from),
    );
    id
}

/// Stripe's placeholder for personal data after redaction.
const REDACTED: &str = "[redacted]";

/// `status` of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    RequiresInput,
    Processing,
    Verified,
    Canceled,
}

impl Status {
    /// The enum of the schema, in its order.
    pub const ALL: &'static [&'static str] =
        &["canceled", "processing", "requires_input", "verified"];

    pub fn parse(text: &str) -> Option<Status> {
        match text {
            "canceled" => Some(Status::Canceled),
            "processing" => Some(Status::Processing),
            "requires_input" => Some(Status::RequiresInput),
            "verified" => Some(Status::Verified),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Canceled => "canceled",
            Status::Processing => "processing",
            Status::RequiresInput => "requires_input",
            Status::Verified => "verified",
        }
    }
}

/// `type` of a session: asked for on create, or `verification_flow` when a flow is used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionType {
    Document,
    IdNumber,
    VerificationFlow,
}

impl SessionType {
    pub fn parse(text: &str) -> Option<SessionType> {
        match text {
            "document" => Some(SessionType::Document),
            "id_number" => Some(SessionType::IdNumber),
            "verification_flow" => Some(SessionType::VerificationFlow),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SessionType::Document => "document",
            SessionType::IdNumber => "id_number",
            SessionType::VerificationFlow => "verification_flow",
        }
    }
}

/// `last_error.code` values (`gelato_session_last_error`).
pub const LAST_ERROR_CODES: &[&str] = &[
    "abandoned",
    "consent_declined",
    "country_not_supported",
    "device_not_supported",
    "document_expired",
    "document_type_not_supported",
    "document_unverified_other",
    "email_unverified_other",
    "email_verification_declined",
    "id_number_insufficient_document_data",
    "id_number_mismatch",
    "id_number_unverified_other",
    "phone_unverified_other",
    "phone_verification_declined",
    "selfie_document_missing_photo",
    "selfie_face_mismatch",
    "selfie_manipulated",
    "selfie_unverified_other",
    "under_supported_age",
];

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DocumentOptions {
    pub allowed_types: Option<Vec<String>>,
    pub require_id_number: Option<bool>,
    pub require_live_capture: Option<bool>,
    pub require_matching_selfie: Option<bool>,
}

impl DocumentOptions {
    fn apply(&mut self, patch: DocumentPatch) {
        patch.allowed_types.apply(&mut self.allowed_types);
        patch.require_id_number.apply(&mut self.require_id_number);
        patch
            .require_live_capture
            .apply(&mut self.require_live_capture);
        patch
            .require_matching_selfie
            .apply(&mut self.require_matching_selfie);
    }

    /// Only what was set, as Stripe echoes options (`"document": {}` when nothing was).
    fn to_json(&self) -> Value {
        let mut object = Map::new();
        if let Some(types) = &self.allowed_types {
            object.insert("allowed_types".into(), json!(types));
        }
        for (name, value) in [
            ("require_id_number", self.require_id_number),
            ("require_live_capture", self.require_live_capture),
            ("require_matching_selfie", self.require_matching_selfie),
        ] {
            if let Some(value) = value {
                object.insert(name.into(), json!(value));
            }
        }
        Value::Object(object)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProvidedDetails {
    pub email: Option<String>,
    pub phone: Option<String>,
}

impl ProvidedDetails {
    fn apply(&mut self, patch: DetailsPatch) {
        patch.email.apply(&mut self.email);
        patch.phone.apply(&mut self.phone);
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    pub city: Option<String>,
    pub country: Option<String>,
    pub line1: Option<String>,
    pub line2: Option<String>,
    pub postal_code: Option<String>,
    pub state: Option<String>,
}

impl Address {
    fn to_json(&self) -> Value {
        json!({
            "city": self.city,
            "country": self.country,
            "line1": self.line1,
            "line2": self.line2,
            "postal_code": self.postal_code,
            "state": self.state,
        })
    }

    fn redact(&mut self) {
        for field in [
            &mut self.city,
            &mut self.country,
            &mut self.line1,
            &mut self.line2,
            &mut self.postal_code,
            &mut self.state,
        ] {
            redact(field);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Date {
    pub day: i64,
    pub month: i64,
    pub year: i64,
}

impl Date {
    fn to_json(self) -> Value {
        json!({"day": self.day, "month": self.month, "year": self.year})
    }
}

/// What a verification established about the person: the source of `verified_outputs` and of
/// the report's check results. Fake, but shaped like the real thing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub first_name: String,
    pub last_name: String,
    pub address: Address,
    pub dob: Date,
    pub email: Option<String>,
    pub phone: Option<String>,
    pub id_number: String,
    pub id_number_type: &'static str,
}

impl Identity {
    fn fake(details: Option<&ProvidedDetails>) -> Identity {
        Identity {
            first_name: "Jenny".into(),
            last_name: "Rosen".into(),
            address: Address {
                city: Some("San Francisco".into()),
                country: Some("US".into()),
                line1: Some("1234 Main St.".into()),
                line2: None,
                postal_code: Some("94111".into()),
                state: Some("CA".into()),
            },
            dob: Date {
                day: 1,
                month: 1,
                year: 1990,
            },
            email: details.and_then(|d| d.email.clone()),
            phone: details.and_then(|d| d.phone.clone()),
            id_number: "000000000".into(),
            id_number_type: "us_ssn",
        }
    }

    /// Stripe's redaction: `[redacted]` for text, 1 January 1900 for dates.
    fn redact(&mut self) {
        REDACTED.clone_into(&mut self.first_name);
        REDACTED.clone_into(&mut self.last_name);
        self.address.redact();
        self.dob = Date {
            day: 1,
            month: 1,
            year: 1900,
        };
        redact(&mut self.email);
        redact(&mut self.phone);
        REDACTED.clone_into(&mut self.id_number);
    }
}

fn redact(field: &mut Option<String>) {
    if field.is_some() {
        *field = Some(REDACTED.to_owned());
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastError {
    pub code: String,
    pub reason: String,
}

/// `redaction.status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Redaction {
    Processing,
    Redacted,
}

/// The report a verification produced (`last_verification_report`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub id: String,
    pub created: i64,
}

/// How a response shows a session: what was expanded, and whether the key is restricted
/// (`rk_`), which Stripe requires for `verified_outputs.dob` and `verified_outputs.id_number`.
#[derive(Debug, Clone, Copy)]
pub struct View<'a> {
    pub expand: &'a Expand,
    pub restricted: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub id: String,
    /// Creation order, which breaks ties between sessions created in the same second.
    pub seq: u64,
    pub created: i64,
    pub livemode: bool,
    pub status: Status,
    pub kind: SessionType,
    pub verification_flow: Option<String>,
    pub client_reference_id: Option<String>,
    pub client_secret: Option<String>,
    pub url: Option<String>,
    pub metadata: Map<String, Value>,
    pub document_options: Option<DocumentOptions>,
    pub provided_details: Option<ProvidedDetails>,
    pub related_customer: Option<String>,
    pub related_customer_account: Option<String>,
    pub related_person: Option<RelatedPerson>,
    /// Accepted on create as Stripe does; it only matters to the hosted page.
    pub return_url: Option<String>,
    pub last_error: Option<LastError>,
    pub report: Option<Report>,
    pub identity: Option<Identity>,
    pub redaction: Option<Redaction>,
}

impl Session {
    /// A new session in `requires_input`; fails only on metadata that would not fit.
    pub fn create(
        seq: u64,
        created: i64,
        livemode: bool,
        params: CreateParams,
    ) -> Result<Session, ApiError> {
        let id = random_id("vs_", 24);
        let metadata = merged_metadata(&Map::new(), params.metadata)?;
        let kind = match (&params.verification_flow, params.kind) {
            (Some(_), _) => SessionType::VerificationFlow,
            (None, Some(kind)) => kind,
            (None, None) => SessionType::Document,
        };
        let mut document_options = None;
        if let Patch::Set(patch) = params.document {
            let mut options = DocumentOptions::default();
            options.apply(patch);
            document_options = Some(options);
        }
        let mut provided_details = None;
        if let Patch::Set(patch) = params.provided_details {
            let mut details = ProvidedDetails::default();
            details.apply(patch);
            provided_details = Some(details);
        }
        let mut session = Session {
            id,
            seq,
            created,
            livemode,
            status: Status::RequiresInput,
            kind,
            verification_flow: params.verification_flow,
            client_reference_id: params.client_reference_id,
            client_secret: None,
            url: None,
            metadata,
            document_options,
            provided_details,
            related_customer: params.related_customer,
            related_customer_account: params.related_customer_account,
            related_person: params.related_person,
            return_url: params.return_url,
            last_error: None,
            report: None,
            identity: None,
            redaction: None,
        };
        session.open_for_input();
        Ok(session)
    }

    /// A fresh `client_secret` and `url`, as Stripe issues whenever input is required again.
    fn open_for_input(&mut self) {
        let mode = if self.livemode { "live" } else { "test" };
        self.client_secret = Some(format!("{}_secret_{mode}_{}", self.id, random_id("", 24)));
        self.url = Some(format!(
            "https://verify.stripe.com/start/{mode}_{}",
            random_id("", 32)
        ));
    }

    fn close_for_input(&mut self) {
        self.client_secret = None;
        self.url = None;
    }

    fn refuse_if_redacted(&self, action: &str) -> Result<(), ApiError> {
        match self.redaction {
            Some(_) => Err(ApiError::state(format!(
                "This VerificationSession has been redacted and can no longer be {action}: {}",
                self.id
            ))),
            None => Ok(()),
        }
    }

    fn require_status(&self, allowed: &[Status], action: &str) -> Result<(), ApiError> {
        if allowed.contains(&self.status) {
            return Ok(());
        }
        let allowed: Vec<&str> = allowed.iter().map(|s| s.as_str()).collect();
        Err(ApiError::state(format!(
            "This VerificationSession cannot be {action} because it has a status of `{}`; \
             it must be {}",
            self.status.as_str(),
            allowed.join(" or ")
        )))
    }

    /// Applies an update atomically: every check runs before anything changes.
    pub fn update(&mut self, params: UpdateParams) -> Result<(), ApiError> {
        let metadata = merged_metadata(&self.metadata, params.metadata)?;
        self.refuse_if_redacted("updated")?;
        self.require_status(&[Status::RequiresInput], "updated")?;
        self.metadata = metadata;
        if let Some(kind) = params.kind {
            self.kind = kind;
        }
        match params.document {
            Patch::Keep => {}
            Patch::Unset => self.document_options = None,
            Patch::Set(patch) => self
                .document_options
                .get_or_insert_with(DocumentOptions::default)
                .apply(patch),
        }
        match params.provided_details {
            Patch::Keep => {}
            Patch::Unset => self.provided_details = None,
            Patch::Set(patch) => self
                .provided_details
                .get_or_insert_with(ProvidedDetails::default)
                .apply(patch),
        }
        Ok(())
    }

    pub fn cancel(&mut self) -> Result<(), ApiError> {
        self.refuse_if_redacted("canceled")?;
        self.require_status(&[Status::RequiresInput], "canceled")?;
        self.status = Status::Canceled;
        self.close_for_input();
        Ok(())
    }

    /// Starts a redaction; from `requires_input` it also cancels, as Stripe documents.
    pub fn redact(&mut self) -> Result<(), ApiError> {
        if self.redaction.is_some() {
            return Err(ApiError::state(format!(
                "This VerificationSession has already been redacted: {}",
                self.id
            )));
        }
        self.require_status(
            &[Status::RequiresInput, Status::Verified, Status::Canceled],
            "redacted",
        )?;
        if self.status == Status::RequiresInput {
            self.status = Status::Canceled;
        }
        self.close_for_input();
        self.redaction = Some(Redaction::Processing);
        self.metadata = Map::new();
        if let Some(details) = &mut self.provided_details {
            redact(&mut details.email);
            redact(&mut details.phone);
        }
        if let Some(identity) = &mut self.identity {
            identity.redact();
        }
        Ok(())
    }

    /// `/_sim/.../processing`: the user submitted on the hosted page.
    pub fn start_processing(&mut self) -> Result<(), ApiError> {
        self.refuse_if_redacted("processed")?;
        self.require_status(&[Status::RequiresInput], "processed")?;
        self.status = Status::Processing;
        self.close_for_input();
        Ok(())
    }

    /// `/_sim/.../verified`: every check passed.
    pub fn verify(&mut self, report: Report) -> Result<(), ApiError> {
        self.refuse_if_redacted("verified")?;
        self.require_status(&[Status::RequiresInput, Status::Processing], "verified")?;
        self.status = Status::Verified;
        self.close_for_input();
        self.last_error = None;
        self.identity = Some(Identity::fake(self.provided_details.as_ref()));
        self.report = Some(report);
        Ok(())
    }

    /// `/_sim/.../requires_input`: a check failed and the user has to try again.
    pub fn fail(&mut self, error: LastError) -> Result<(), ApiError> {
        self.refuse_if_redacted("sent back to requires_input")?;
        self.require_status(
            &[Status::RequiresInput, Status::Processing],
            "sent back to requires_input",
        )?;
        self.status = Status::RequiresInput;
        self.last_error = Some(error);
        self.open_for_input();
        Ok(())
    }

    /// `/_sim/.../redacted`: the redaction Stripe started has finished.
    pub fn finish_redaction(&mut self) -> Result<(), ApiError> {
        match self.redaction {
            Some(Redaction::Processing) => {
                self.redaction = Some(Redaction::Redacted);
                Ok(())
            }
            _ => Err(ApiError::state(format!(
                "This VerificationSession has no redaction in progress: {}",
                self.id
            ))),
        }
    }

    /// The `options` object: what was set, with `document: {}` for document checks and
    /// `id_number: {}` for id number checks, as Stripe returns them.
    fn options_json(&self) -> Value {
        let mut options = Map::new();
        match (&self.document_options, self.kind) {
            (Some(document), _) => {
                options.insert("document".into(), document.to_json());
            }
            (None, SessionType::Document) => {
                options.insert("document".into(), json!({}));
            }
            (None, _) => {}
        }
        if self.kind == SessionType::IdNumber {
            options.insert("id_number".into(), json!({}));
        }
        Value::Object(options)
    }

    /// The `identity.verification_session` object: `id` and `object` first, then every field
    /// of the schema in its order. Fields the schema marks neither nullable nor required
    /// (`related_person`, `verification_flow`, `verified_outputs`) are left out when unset or
    /// not expanded, as Stripe leaves them out.
    pub fn render(&self, view: View<'_>) -> Value {
        let mut object = Map::new();
        object.insert("id".into(), json!(self.id));
        object.insert("object".into(), json!("identity.verification_session"));
        object.insert(
            "client_reference_id".into(),
            json!(self.client_reference_id),
        );
        object.insert("client_secret".into(), json!(self.client_secret));
        object.insert("created".into(), json!(self.created));
        object.insert(
            "last_error".into(),
            match &self.last_error {
                Some(error) => json!({"code": error.code, "reason": error.reason}),
                None => Value::Null,
            },
        );
        object.insert(
            "last_verification_report".into(),
            match &self.report {
                Some(report) if view.expand.covers("last_verification_report") => {
                    self.render_report(report)
                }
                Some(report) => json!(report.id),
                None => Value::Null,
            },
        );
        object.insert("livemode".into(), json!(self.livemode));
        object.insert("metadata".into(), Value::Object(self.metadata.clone()));
        object.insert("options".into(), self.options_json());
        object.insert(
            "provided_details".into(),
            match &self.provided_details {
                Some(details) => {
                    let mut map = Map::new();
                    if let Some(email) = &details.email {
                        map.insert("email".into(), json!(email));
                    }
                    if let Some(phone) = &details.phone {
                        map.insert("phone".into(), json!(phone));
                    }
                    Value::Object(map)
                }
                None => Value::Null,
            },
        );
        object.insert(
            "redaction".into(),
            match self.redaction {
                Some(Redaction::Processing) => json!({"status": "processing"}),
                Some(Redaction::Redacted) => json!({"status": "redacted"}),
                None => Value::Null,
            },
        );
        object.insert("related_customer".into(), json!(self.related_customer));
        object.insert(
            "related_customer_account".into(),
            json!(self.related_customer_account),
        );
        if let Some(person) = &self.related_person {
            object.insert(
                "related_person".into(),
                json!({"account": person.account, "person": person.person}),
            );
        }
        object.insert("status".into(), json!(self.status.as_str()));
        object.insert("type".into(), json!(self.kind.as_str()));
        object.insert("url".into(), json!(self.url));
        if let Some(flow) = &self.verification_flow {
            object.insert("verification_flow".into(), json!(flow));
        }
        if view.expand.covers("verified_outputs") {
            object.insert(
                "verified_outputs".into(),
                match &self.identity {
                    Some(identity) => self.render_outputs(identity, view),
                    None => Value::Null,
                },
            );
        }
        Value::Object(object)
    }

    /// `verified_outputs`; `dob` and `id_number` only for a restricted key that expanded them.
    fn render_outputs(&self, identity: &Identity, view: View<'_>) -> Value {
        let sensitive = |path: &str| view.restricted && view.expand.has(path);
        json!({
            "address": identity.address.to_json(),
            "dob": if sensitive("verified_outputs.dob") { identity.dob.to_json() } else { Value::Null },
            "email": identity.email,
            "first_name": identity.first_name,
            "id_number": if sensitive("verified_outputs.id_number") { json!(identity.id_number) } else { Value::Null },
            "id_number_type": identity.id_number_type,
            "last_name": identity.last_name,
            "phone": identity.phone,
            "sex": null,
            "unparsed_place_of_birth": null,
            "unparsed_sex": null,
        })
    }

    /// A minimal `identity.verification_report`: the required fields, the options, and the
    /// result of the check the session's type ran.
    fn render_report(&self, report: &Report) -> Value {
        let identity = self.identity.as_ref();
        let first_name = identity.map(|i| i.first_name.clone());
        let last_name = identity.map(|i| i.last_name.clone());
        let mut object = Map::new();
        object.insert("id".into(), json!(report.id));
        object.insert("object".into(), json!("identity.verification_report"));
        object.insert(
            "client_reference_id".into(),
            json!(self.client_reference_id),
        );
        object.insert("created".into(), json!(report.created));
        if self.kind != SessionType::IdNumber {
            object.insert(
                "document".into(),
                json!({
                    "address": identity.map(|i| i.address.to_json()),
                    "dob": null,
                    "error": null,
                    "expiration_date": {"day": 1, "month": 1, "year": 2035},
                    "files": [],
                    "first_name": first_name,
                    "issued_date": {"day": 1, "month": 1, "year": 2025},
                    "issuing_country": "US",
                    "last_name": last_name,
                    "number": null,
                    "sex": null,
                    "status": "verified",
                    "type": "driving_license",
                    "unparsed_place_of_birth": null,
                    "unparsed_sex": null,
                }),
            );
        }
        if self.kind == SessionType::IdNumber {
            object.insert(
                "id_number".into(),
                json!({
                    "dob": null,
                    "error": null,
                    "first_name": first_name,
                    "id_number": null,
                    "id_number_type": identity.map(|i| i.id_number_type),
                    "last_name": last_name,
                    "status": "verified",
                }),
            );
        }
        object.insert("livemode".into(), json!(self.livemode));
        object.insert("options".into(), self.options_json());
        object.insert("type".into(), json!(self.kind.as_str()));
        if let Some(flow) = &self.verification_flow {
            object.insert("verification_flow".into(), json!(flow));
        }
        object.insert("verification_session".into(), json!(self.id));
        Value::Object(object)
    }
}

/// `current` with `change` applied, refused when it would hold more than Stripe's 50 keys.
fn merged_metadata(
    current: &Map<String, Value>,
    change: MetadataChange,
) -> Result<Map<String, Value>, ApiError> {
    let merged = match change {
        MetadataChange::Keep => current.clone(),
        MetadataChange::Clear => Map::new(),
        MetadataChange::Merge(entries) => {
            let mut merged = current.clone();
            for (key, value) in entries {
                match value {
                    Some(value) => {
                        merged.insert(key, Value::String(value));
                    }
                    None => {
                        merged.shift_remove(&key);
                    }
                }
            }
            merged
        }
    };
    if merged.len() > MAX_METADATA_KEYS {
        return Err(ApiError::invalid(
            "metadata",
            format!(
                "Invalid metadata: an object can have at most {MAX_METADATA_KEYS} metadata keys \
                 (this request would leave {})",
                merged.len()
            ),
        ));
    }
    Ok(merged)
}
