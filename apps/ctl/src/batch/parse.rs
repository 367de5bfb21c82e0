//! A batch file: one command a line, CSV or JSON, read whole and checked
//! before anything is sent.
//!
//! CSV lines (fields separated by commas, surrounding spaces ignored):
//!
//! ```text
//! order,SKU,QTY[,LOCATION[,ID]]
//! modify,ID,QTY
//! cancel,ID
//! hold,SKU,QTY,LOCATION[,TTL_MS[,ID]]
//! confirm,ID
//! release,ID
//! transfer,SKU,QTY,FROM,TO[,ID]
//! recount,SKU,LOCATION,ON_HAND[,EXPECTED_VERSION]
//! adjust,restock|return|shrink,SKU,QTY,LOCATION
//! ```
//!
//! A line starting with `{` is JSON: `{"command":"order","sku":"MUG",
//! "qty":2,"location":"STORE-A","id":17}` (the fields of
//! [`Spec`], `id` optional where the command creates it). Empty lines,
//! lines starting with `#`, and a first line starting with `command` (a
//! header) are skipped. An empty LOCATION or ID field means "not given".
//! Where an order, hold or transfer gives no id, the batch assigns
//! `id_base + line number` (its state file keeps `id_base`).

use std::io::{BufRead, Read as _};

use tally_client::command::{printable, AdjustReason, Ref, Spec, DEFAULT_TTL_MS};

/// Longest line accepted, in bytes.
pub const LINE_BYTES_MAX: usize = 4096;
/// Most command lines in one batch.
pub const LINES_MAX: usize = 10_000_000;

/// One command line: its line number in the file (from 1) and its command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    pub number: u64,
    pub spec: Spec,
}

/// The commands of a file, and a hash of its bytes (its identity).
#[derive(Debug)]
pub struct Batch {
    pub lines: Vec<Line>,
    pub xxh64: u64,
}

/// Reads and checks every line of `input`; the first line that is not a
/// command is the error (`line N: …`).
pub fn read(input: impl BufRead) -> Result<Batch, String> {
    let mut input = input;
    let mut hash = tally_client::snapshot::Xxh64::new();
    let mut lines = Vec::new();
    let mut buffer = Vec::with_capacity(256);
    let mut number = 0u64;
    loop {
        buffer.clear();
        number += 1;
        let read = std::io::Read::by_ref(&mut input)
            .take(LINE_BYTES_MAX as u64 + 1)
            .read_until(b'\n', &mut buffer)
            .map_err(|e| format!("reading line {number}: {e}"))?;
        if read == 0 {
            break;
        }
        hash.update(&buffer);
        if buffer.len() > LINE_BYTES_MAX {
            return Err(format!("line {number}: longer than {LINE_BYTES_MAX} bytes"));
        }
        let text = std::str::from_utf8(&buffer)
            .map_err(|_| format!("line {number}: not UTF-8 text"))?
            .trim();
        if text.is_empty() || text.starts_with('#') || (number == 1 && text.starts_with("command"))
        {
            continue;
        }
        if lines.len() == LINES_MAX {
            return Err(format!("more than {LINES_MAX} commands: split the file"));
        }
        let spec =
            parse_line(text).map_err(|e| format!("line {number}: {e}: {}", printable(text)))?;
        lines.push(Line { number, spec });
    }
    Ok(Batch {
        lines,
        xxh64: hash.digest(),
    })
}

/// How a JSON line starts (`{`, written so that brace-counting tools see
/// balanced braces).
const JSON_OBJECT_START: char = '\x7b';

/// One line, CSV or JSON.
pub fn parse_line(text: &str) -> Result<Spec, String> {
    if text.starts_with(JSON_OBJECT_START) {
        return serde_json::from_str(text).map_err(|e| format!("not a command: {e}"));
    }
    let fields: Vec<&str> = text.split(',').map(str::trim).collect();
    let fields = Fields {
        command: fields[0],
        args: &fields[1..],
    };
    match fields.command {
        "order" | "modify" | "cancel" | "hold" | "confirm" | "release" => pos_line(&fields),
        "transfer" | "recount" | "adjust" => ops_line(&fields),
        other => Err(format!(
            "unknown command \"{}\" (order, modify, cancel, hold, confirm, release, transfer, \
             recount, adjust)",
            printable(other)
        )),
    }
}

/// A CSV line's command name and the fields after it.
struct Fields<'a> {
    command: &'a str,
    args: &'a [&'a str],
}

impl Fields<'_> {
    /// Refuses a field count outside `min..=max`.
    fn arity(&self, min: usize, max: usize) -> Result<(), String> {
        if self.args.len() < min || self.args.len() > max {
            return Err(format!(
                "{} takes {min} to {max} fields after its name, not {}",
                self.command,
                self.args.len()
            ));
        }
        Ok(())
    }

    /// Field `i`, unless absent or empty.
    fn opt(&self, i: usize) -> Option<&str> {
        self.args.get(i).copied().filter(|f| !f.is_empty())
    }
}

/// The point-of-sale commands: order, modify, cancel, hold, confirm,
/// release.
fn pos_line(fields: &Fields<'_>) -> Result<Spec, String> {
    let args = fields.args;
    Ok(match fields.command {
        "order" => {
            fields.arity(2, 4)?;
            Spec::Order {
                id: id_or_zero(fields.opt(3))?,
                sku: sku(args[0])?,
                qty: number(args[1])?,
                location: fields.opt(2).map(Ref::from),
            }
        }
        "modify" => {
            fields.arity(2, 2)?;
            Spec::Modify {
                id: number(args[0])?,
                qty: number(args[1])?,
            }
        }
        "hold" => {
            fields.arity(3, 5)?;
            let ttl_ms = match fields.opt(3) {
                Some(ttl) => {
                    u32::try_from(number(ttl)?).map_err(|_| format!("ttl {ttl} too large"))?
                }
                None => DEFAULT_TTL_MS,
            };
            Spec::Hold {
                id: id_or_zero(fields.opt(4))?,
                sku: sku(args[0])?,
                qty: number(args[1])?,
                location: place(args[2])?,
                ttl_ms,
            }
        }
        name => {
            fields.arity(1, 1)?;
            let id = number(args[0])?;
            match name {
                "cancel" => Spec::Cancel { id },
                "confirm" => Spec::Confirm { id },
                _ => Spec::Release { id },
            }
        }
    })
}

/// The back-office commands: transfer, recount, adjust.
fn ops_line(fields: &Fields<'_>) -> Result<Spec, String> {
    let args = fields.args;
    Ok(match fields.command {
        "transfer" => {
            fields.arity(4, 5)?;
            Spec::Transfer {
                id: id_or_zero(fields.opt(4))?,
                sku: sku(args[0])?,
                qty: number(args[1])?,
                from: place(args[2])?,
                to: place(args[3])?,
            }
        }
        "recount" => {
            fields.arity(3, 4)?;
            Spec::Recount {
                sku: sku(args[0])?,
                location: place(args[1])?,
                on_hand: number(args[2])?,
                expected_version: fields.opt(3).map(number).transpose()?.unwrap_or(0),
            }
        }
        _ => {
            fields.arity(4, 4)?;
            let reason = AdjustReason::parse(args[0]).ok_or_else(|| {
                format!(
                    "adjust reason \"{}\" is not restock, return or shrink",
                    printable(args[0])
                )
            })?;
            Spec::Adjust {
                reason,
                sku: sku(args[1])?,
                qty: number(args[2])?,
                location: place(args[3])?,
            }
        }
    })
}

fn number(field: &str) -> Result<u64, String> {
    field
        .parse()
        .map_err(|_| format!("\"{}\" is not a whole number", printable(field)))
}

fn id_or_zero(field: Option<&str>) -> Result<u64, String> {
    match field {
        Some(field) => match number(field)? {
            0 => Err("id 0 is reserved (leave the field empty to have one assigned)".into()),
            id => Ok(id),
        },
        None => Ok(0),
    }
}

fn sku(field: &str) -> Result<Ref, String> {
    if field.is_empty() {
        return Err("empty SKU".into());
    }
    Ok(Ref::from(field))
}

fn place(field: &str) -> Result<Ref, String> {
    if field.is_empty() {
        return Err("empty location".into());
    }
    Ok(Ref::from(field))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_and_json_lines_become_specs() {
        let text = "command,args\n# a comment\n\norder,MUG,2,STORE-A,17\norder, MUG ,1\n\
                    {\"command\":\"cancel\",\"id\":17}\nadjust,shrink,MUG,3,STORE-B\n\
                    recount,MUG,STORE-A,8,41\nhold,TEE,1,STORE-A\n";
        let batch = read(text.as_bytes()).unwrap();
        let specs: Vec<_> = batch
            .lines
            .iter()
            .map(|l| (l.number, l.spec.clone()))
            .collect();
        assert_eq!(specs.len(), 6);
        assert_eq!(
            specs[0],
            (
                4,
                Spec::Order {
                    id: 17,
                    sku: "MUG".into(),
                    qty: 2,
                    location: Some("STORE-A".into())
                }
            )
        );
        assert_eq!(
            specs[1].1,
            Spec::Order {
                id: 0,
                sku: "MUG".into(),
                qty: 1,
                location: None
            }
        );
        assert_eq!(specs[2].1, Spec::Cancel { id: 17 });
        assert!(matches!(
            specs[3].1,
            Spec::Adjust {
                reason: AdjustReason::Shrink,
                qty: 3,
                ..
            }
        ));
        assert!(matches!(
            specs[4].1,
            Spec::Recount {
                on_hand: 8,
                expected_version: 41,
                ..
            }
        ));
        assert!(matches!(
            specs[5].1,
            Spec::Hold {
                ttl_ms: DEFAULT_TTL_MS,
                id: 0,
                ..
            }
        ));
        assert_eq!(
            read(text.as_bytes()).unwrap().xxh64,
            batch.xxh64,
            "same bytes, same identity"
        );
    }

    #[test]
    fn hostile_lines_are_refused_with_their_number() {
        let cases: [(&str, &str); 8] = [
            ("order,MUG\n", "line 1: order takes 2 to 4 fields"),
            ("sell,MUG,1\n", "line 1: unknown command"),
            ("order,MUG,-1\n", "is not a whole number"),
            ("order,MUG,1,,0\n", "id 0 is reserved"),
            ("{\"command\":\"order\"}\n", "not a command"),
            (
                "{\"command\":\"order\",\"sku\":\"M\",\"qty\":1,\"evil\":1}\n",
                "unknown field",
            ),
            ("adjust,steal,MUG,1,A\n", "not restock, return or shrink"),
            ("\u{1b}[2J,1\n", "unknown command \"\\u{1b}[2J\" "),
        ];
        for (text, expected) in cases {
            let error = read(format!("order,MUG,1\n{text}").as_bytes()).unwrap_err();
            assert!(
                error.contains(expected) || error.contains(&expected.replace("line 1", "line 2")),
                "{text:?}: {error}"
            );
            assert!(error.starts_with("line 2: "), "{error}");
        }
        let huge = format!("order,{},1\n", "A".repeat(LINE_BYTES_MAX * 4));
        assert_eq!(
            read(huge.as_bytes()).unwrap_err(),
            format!("line 1: longer than {LINE_BYTES_MAX} bytes")
        );
        assert!(read(&b"order,MUG,1\n\xff\xfe\n"[..])
            .unwrap_err()
            .contains("line 2: not UTF-8"));
    }
}
