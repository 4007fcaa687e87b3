//! Session options: `catalog` (hive) and `schema` (box), set with SetSessionOptions and carried
//! back to the client in its token (no node keeps them).

use std::collections::HashMap;

use apiary_proto::flight_session as fs;
use apiary_storage::paths::{DEFAULT_BOX, DEFAULT_HIVE};
use apiary_storage::{BoxRef, Ident};
use prost::Message;

use super::FlightSql;
use crate::auth::{Place, Principal, SessionSlot};
use crate::error::{Error, Result};

/// Options a client may set with SetSessionOptions.
const OPT_CATALOG: &str = "catalog";
const OPT_SCHEMA: &str = "schema";

type OptionError = fs::set_session_options_result::ErrorValue;

fn error(v: OptionError) -> fs::set_session_options_result::Error {
    fs::set_session_options_result::Error { value: v as i32 }
}

fn string_value(s: &str) -> fs::SessionOptionValue {
    fs::SessionOptionValue {
        option_value: Some(fs::session_option_value::OptionValue::StringValue(
            s.to_string(),
        )),
    }
}

impl FlightSql {
    /// SetSessionOptions. A name or value the client got wrong is reported per option; a
    /// storage failure while checking fails the whole call.
    pub(super) async fn set_session_options(
        &self,
        who: &Principal,
        slot: Option<SessionSlot>,
        body: bytes::Bytes,
    ) -> Result<fs::SetSessionOptionsResult> {
        let req = fs::SetSessionOptionsRequest::decode(body)
            .map_err(|_| Error::invalid("malformed SetSessionOptionsRequest"))?;
        let mut hive = who.hive.clone();
        let mut box_name = who.box_name.clone();
        let mut errors = HashMap::new();
        // The catalog first: a schema is looked up in the catalog the same request sets (a
        // protobuf map has no order, and half of the requests setting both checked the schema
        // against the old catalog).
        let mut options: Vec<_> = req.session_options.into_iter().collect();
        options.sort_by_key(|(name, _)| name != OPT_CATALOG);
        for (name, value) in options {
            let text = match value.option_value {
                Some(fs::session_option_value::OptionValue::StringValue(s)) => Some(s),
                _ => None,
            };
            let outcome = match (name.as_str(), text) {
                (OPT_CATALOG, Some(v)) => match Ident::parse(&v) {
                    Ok(h) if self.service.hive_exists(&h).await? => {
                        // The box is kept if the new hive has it, else it is the hive's entry
                        // box (`default`, or `information_schema` where there is none).
                        let kept = Ident::parse(&box_name).unwrap_or_else(|_| Ident::default_box());
                        if !self
                            .service
                            .box_exists(&BoxRef::new(h.clone(), kept))
                            .await?
                        {
                            box_name = self.service.entry_box(&h).await?.to_string();
                        }
                        hive = h.to_string();
                        None
                    }
                    _ => Some(OptionError::InvalidValue),
                },
                (OPT_SCHEMA, Some(v)) => match (Ident::parse(&hive), Ident::parse(&v)) {
                    (Ok(h), Ok(b)) => {
                        let name = b.to_string();
                        if self.service.box_exists(&BoxRef::new(h, b)).await? {
                            box_name = name;
                            None
                        } else {
                            Some(OptionError::InvalidValue)
                        }
                    }
                    _ => Some(OptionError::InvalidValue),
                },
                (OPT_CATALOG | OPT_SCHEMA, None) => Some(OptionError::InvalidValue),
                _ => Some(OptionError::InvalidName),
            };
            if let Some(e) = outcome {
                errors.insert(name, error(e));
            }
        }
        if let Some(s) = slot {
            s.set(Place {
                hive,
                box_name,
                options: who.options.clone(),
            });
        }
        Ok(fs::SetSessionOptionsResult { errors })
    }

    pub(super) fn get_session_options(&self, who: &Principal) -> fs::GetSessionOptionsResult {
        let mut options = HashMap::new();
        options.insert(OPT_CATALOG.to_string(), string_value(&who.hive));
        options.insert(OPT_SCHEMA.to_string(), string_value(&who.box_name));
        fs::GetSessionOptionsResult {
            session_options: options,
        }
    }

    pub(super) fn close_session(&self, slot: Option<SessionSlot>) -> fs::CloseSessionResult {
        if let Some(s) = slot {
            s.set(Place {
                hive: DEFAULT_HIVE.into(),
                box_name: DEFAULT_BOX.into(),
                options: Vec::new(),
            });
        }
        fs::CloseSessionResult {
            status: fs::close_session_result::Status::Closed as i32,
        }
    }
}
