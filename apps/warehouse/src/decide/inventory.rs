//! Loading the initial inventory from CSV (`location,sku_symbol,quantity`)
//! into an empty warehouse, and what is wrong with a bad file.

use core::fmt;
use std::collections::HashMap;
use std::io::BufRead;
use std::path::Path;

use tally_wire::pad_ascii;

use super::Warehouse;
use tally_client::replica::{CellState, PROVISIONAL_VERSION_BIT};

/// What [`Warehouse::load_inventory`] loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InventorySummary {
    /// Locations, ids 1..=locations in order of first appearance.
    pub locations: u16,
    /// SKUs, ids 1..=skus in order of first appearance.
    pub skus: u32,
    /// Rows (cells) loaded.
    pub rows: u32,
    /// Units on hand over all cells.
    pub units: u64,
}

/// A bad inventory file, with the 1-based line it was found on (0 = the file
/// as a whole).
#[derive(Debug)]
pub struct InventoryError {
    /// 1-based line number; 0 when the problem is not one line.
    pub line: usize,
    /// What is wrong.
    pub kind: InventoryErrorKind,
}

/// What is wrong with an inventory file.
#[derive(Debug)]
pub enum InventoryErrorKind {
    /// Reading failed.
    Io(std::io::Error),
    /// The file has no header line.
    Empty,
    /// The first line is not `location,sku_symbol,quantity`.
    BadHeader(String),
    /// A row does not have exactly three comma-separated fields.
    FieldCount(usize),
    /// A location name or SKU symbol is empty, longer than 16 bytes or not
    /// printable ASCII.
    BadName {
        /// Which column.
        column: &'static str,
        /// The text.
        text: String,
    },
    /// The quantity is not a whole number in 0..=2^31−1.
    BadQuantity(String),
    /// The same (location, sku) appeared before.
    DuplicateCell {
        /// Line of the first row for the cell.
        first_line: usize,
    },
    /// More distinct locations than the replica's `locations_max`.
    TooManyLocations(u16),
    /// More distinct SKUs than the replica's `skus_max`.
    TooManySkus(u32),
    /// More rows (cells) than the replica's `cells_max`.
    TooManyCells(u32),
    /// The warehouse already holds inventory.
    NotEmpty,
}

impl fmt::Display for InventoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "line {}: ", self.line)?;
        }
        match &self.kind {
            InventoryErrorKind::Io(e) => write!(f, "cannot read the inventory file: {e}"),
            InventoryErrorKind::Empty => {
                f.write_str("the inventory file is empty (expected a header line `location,sku_symbol,quantity`)")
            }
            InventoryErrorKind::BadHeader(h) => write!(
                f,
                "expected the header `location,sku_symbol,quantity`, found `{h}`"
            ),
            InventoryErrorKind::FieldCount(n) => write!(
                f,
                "expected 3 comma-separated fields (location,sku_symbol,quantity), found {n}"
            ),
            InventoryErrorKind::BadName { column, text } => write!(
                f,
                "{column} `{text}` must be 1 to 16 printable ASCII characters"
            ),
            InventoryErrorKind::BadQuantity(q) => write!(
                f,
                "quantity `{q}` is not a whole number of units between 0 and 2147483647"
            ),
            InventoryErrorKind::DuplicateCell { first_line } => write!(
                f,
                "this location and SKU already appeared on line {first_line}"
            ),
            InventoryErrorKind::TooManyLocations(max) => write!(
                f,
                "more than {max} locations (the limit locations_max = {max}: raise it in the \
                 configuration's [limits] or with --locations-max)"
            ),
            InventoryErrorKind::TooManySkus(max) => write!(
                f,
                "more than {max} SKUs (the limit skus_max = {max}: raise it in the \
                 configuration's [limits] or with --skus-max)"
            ),
            InventoryErrorKind::TooManyCells(max) => write!(
                f,
                "more than {max} cells (the limit cells_max = {max}: raise it in the \
                 configuration's [limits] or with --cells-max)"
            ),
            InventoryErrorKind::NotEmpty => {
                f.write_str("the warehouse already holds inventory; load into a new one")
            }
        }
    }
}

impl std::error::Error for InventoryError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            InventoryErrorKind::Io(e) => Some(e),
            _ => None,
        }
    }
}

impl Warehouse {
    /// Loads the initial inventory from CSV text: a header line
    /// `location,sku_symbol,quantity`, then one row per cell. Location ids
    /// 1..n and SKU ids 1..m are assigned in order of first appearance;
    /// blank lines and lines starting with `#` are skipped. Only into an
    /// empty warehouse; errors name the line and leave it empty.
    pub fn load_inventory(
        &mut self,
        reader: impl BufRead,
    ) -> Result<InventorySummary, InventoryError> {
        if self.replica.sku_count() != 0 || self.replica.location_count() != 0 {
            return Err(err(0, InventoryErrorKind::NotEmpty));
        }
        let loaded = self.load_rows(reader);
        if loaded.is_err() {
            // Nothing half-loaded stays behind (the stream position and
            // pending commands are kept).
            self.replica.clear_inventory();
        }
        loaded
    }

    fn load_rows(&mut self, reader: impl BufRead) -> Result<InventorySummary, InventoryError> {
        let mut rows = 0u32;
        let mut units = 0u64;
        let mut header_seen = false;
        // Location names → index (at most locations_max entries; a start-up
        // allocation, like the file's lines).
        let mut location_by_name: HashMap<[u8; 16], u16> = HashMap::new();
        for (i, line) in reader.lines().enumerate() {
            let number = i + 1;
            let line = line.map_err(|e| err(number, InventoryErrorKind::Io(e)))?;
            let text = line.trim();
            if text.is_empty() || text.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = text.split(',').map(str::trim).collect();
            if !header_seen {
                if !is_header(&fields) {
                    return Err(err(number, InventoryErrorKind::BadHeader(text.to_owned())));
                }
                header_seen = true;
                continue;
            }
            let row = Row::parse(number, &fields)?;
            let location_index = self.load_location(number, row.location, &mut location_by_name)?;
            let sku_index = self.load_sku(number, row.symbol_text, row.symbol)?;
            self.load_cell(number, sku_index, location_index, row.quantity)?;
            rows += 1;
            units += u64::from(row.quantity);
        }
        if !header_seen {
            return Err(err(0, InventoryErrorKind::Empty));
        }
        // Known, not yet on the stream: the broadcast's `I` stamps each.
        self.replica.restamp_seeded_cells(PROVISIONAL_VERSION_BIT);
        Ok(InventorySummary {
            locations: self.replica.location_count(),
            skus: self.replica.sku_count(),
            rows,
            units,
        })
    }

    /// The index of the location named `name`, registered (with the next
    /// id) at its first row.
    fn load_location(
        &mut self,
        number: usize,
        name: [u8; 16],
        location_by_name: &mut HashMap<[u8; 16], u16>,
    ) -> Result<u16, InventoryError> {
        if let Some(&l) = location_by_name.get(&name) {
            return Ok(l);
        }
        let id = self.replica.location_count() + 1;
        let l = self.replica.register_location(id).ok_or_else(|| {
            err(
                number,
                InventoryErrorKind::TooManyLocations(self.replica.limits().locations_max),
            )
        })?;
        self.replica.set_location_name(l, name);
        location_by_name.insert(name, l);
        Ok(l)
    }

    /// The slot of the SKU `symbol_text`, registered (with the next id) at
    /// its first row.
    fn load_sku(
        &mut self,
        number: usize,
        symbol_text: &str,
        symbol: [u8; 16],
    ) -> Result<u32, InventoryError> {
        if let Some(sku) = self.replica.sku_by_symbol(symbol_text) {
            return Ok(self.replica.sku_slot(sku).expect("in the directory"));
        }
        let id = self.replica.sku_count() + 1;
        let s = self.replica.register_sku(id).ok_or_else(|| {
            err(
                number,
                InventoryErrorKind::TooManySkus(self.replica.limits().skus_max),
            )
        })?;
        self.replica.set_symbol(s, symbol);
        Ok(s)
    }

    /// Sets the cell of line `number`, refusing a second row for it.
    fn load_cell(
        &mut self,
        number: usize,
        sku_index: u32,
        location_index: u16,
        quantity: u32,
    ) -> Result<(), InventoryError> {
        let cells_max = self.replica.limits().cells_max;
        let cell = self
            .replica
            .seed_cell(sku_index, location_index)
            .ok_or_else(|| err(number, InventoryErrorKind::TooManyCells(cells_max)))?;
        // While loading, a cell's version holds the line that set it,
        // to name duplicates without a side table.
        if cell.version != 0 {
            let first_line = (cell.version & u64::from(u32::MAX)) as usize;
            return Err(err(
                number,
                InventoryErrorKind::DuplicateCell { first_line },
            ));
        }
        *cell = CellState {
            on_hand: quantity,
            reserved: 0,
            version: PROVISIONAL_VERSION_BIT | number as u64,
        };
        Ok(())
    }

    /// [`Self::load_inventory`] from a file.
    pub fn load_inventory_file(&mut self, path: &Path) -> Result<InventorySummary, InventoryError> {
        let file = std::fs::File::open(path).map_err(|e| err(0, InventoryErrorKind::Io(e)))?;
        self.load_inventory(std::io::BufReader::new(file))
    }
}

/// An [`InventoryError`] at line `line`.
fn err(line: usize, kind: InventoryErrorKind) -> InventoryError {
    InventoryError { line, kind }
}

/// Whether `fields` are the header `location,sku_symbol,quantity` (in any
/// case).
fn is_header(fields: &[&str]) -> bool {
    let expected = ["location", "sku_symbol", "quantity"];
    fields.len() == 3
        && fields
            .iter()
            .zip(expected)
            .all(|(f, e)| f.eq_ignore_ascii_case(e))
}

/// One row of the file, checked.
struct Row<'a> {
    location: [u8; 16],
    symbol: [u8; 16],
    /// The SKU symbol as written (trimmed).
    symbol_text: &'a str,
    quantity: u32,
}

impl<'a> Row<'a> {
    /// Checks line `number`'s fields: three, two names of 1 to 16 ASCII
    /// bytes and a quantity up to `i32::MAX`.
    fn parse(number: usize, fields: &[&'a str]) -> Result<Row<'a>, InventoryError> {
        if fields.len() != 3 {
            return Err(err(number, InventoryErrorKind::FieldCount(fields.len())));
        }
        let name = |column: &'static str, text: &str| {
            let bad_name = || {
                err(
                    number,
                    InventoryErrorKind::BadName {
                        column,
                        text: text.to_owned(),
                    },
                )
            };
            if text.is_empty() {
                return Err(bad_name());
            }
            pad_ascii::<16>(text).map_err(|_| bad_name())
        };
        let location = name("location", fields[0])?;
        let symbol = name("sku_symbol", fields[1])?;
        let quantity: u32 = fields[2]
            .parse()
            .ok()
            .filter(|&q| q <= i32::MAX as u32)
            .ok_or_else(|| {
                err(
                    number,
                    InventoryErrorKind::BadQuantity(fields[2].to_owned()),
                )
            })?;
        Ok(Row {
            location,
            symbol,
            symbol_text: fields[1],
            quantity,
        })
    }
}
