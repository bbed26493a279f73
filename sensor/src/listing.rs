//! `exfil-sensor flows|files|alerts`: one GET to the agent's API socket, printed as a table
//! for admins or as pretty JSON for scripts.

use std::path::Path;

use serde::Serialize;
use thiserror::Error;

use crate::{
    api::{AlertRecord, FileRecord, Filter, FlowRecord},
    client::{self, ClientError},
    table,
};

/// Which of the agent's record lists to show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listing {
    Flows,
    Files,
    Alerts,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Table,
    Json,
}

#[derive(Debug, Error)]
pub enum ListingError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot write the records as JSON: {0}")]
    Encode(serde_json::Error),
}

impl Listing {
    pub fn endpoint(self) -> &'static str {
        match self {
            Self::Flows => "/api/v1/flows",
            Self::Files => "/api/v1/files",
            Self::Alerts => "/api/v1/alerts",
        }
    }
}

/// Fetches the list from the agent at `socket` and returns it as the text to print.
pub fn show(
    listing: Listing,
    socket: &Path,
    filter: &Filter,
    format: Format,
) -> Result<String, ListingError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ListingError::Runtime)?;
    runtime.block_on(fetch(listing, socket, filter, format))
}

async fn fetch(
    listing: Listing,
    socket: &Path,
    filter: &Filter,
    format: Format,
) -> Result<String, ListingError> {
    let path = format!("{}{}", listing.endpoint(), filter.query_string());
    match listing {
        Listing::Flows => {
            let records: Vec<FlowRecord> = client::get_json(socket, &path).await?;
            present(&records, format, table::flows)
        }
        Listing::Files => {
            let records: Vec<FileRecord> = client::get_json(socket, &path).await?;
            present(&records, format, table::files)
        }
        Listing::Alerts => {
            let records: Vec<AlertRecord> = client::get_json(socket, &path).await?;
            present(&records, format, table::alerts)
        }
    }
}

/// The records as one pretty JSON array (decoded first, so that a script never reads a
/// half-understood answer), or as the table.
fn present<R: Serialize>(
    records: &[R],
    format: Format,
    as_table: fn(&[R]) -> String,
) -> Result<String, ListingError> {
    match format {
        Format::Table => Ok(as_table(records)),
        Format::Json => serde_json::to_string_pretty(records)
            .map(|mut text| {
                text.push('\n');
                text
            })
            .map_err(ListingError::Encode),
    }
}
