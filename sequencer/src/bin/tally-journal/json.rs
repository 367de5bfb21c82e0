//! A tiny JSON writer (objects of numbers and strings), enough for the reports.

/// A JSON object written field by field (the tool needs nothing more).
pub(super) struct Json {
    pub(super) text: String,
}

impl Json {
    pub(super) fn object() -> Json {
        Json {
            text: String::from("{"),
        }
    }

    pub(super) fn key(&mut self, key: &str) {
        if self.text.len() > 1 {
            self.text.push(',');
        }
        push_json_string(&mut self.text, key);
        self.text.push(':');
    }

    pub(super) fn string(&mut self, key: &str, value: &str) {
        self.key(key);
        push_json_string(&mut self.text, value);
    }

    pub(super) fn optional_string(&mut self, key: &str, value: Option<&str>) {
        match value {
            Some(value) => self.string(key, value),
            None => self.raw(key, "null"),
        }
    }

    pub(super) fn number(&mut self, key: &str, value: u64) {
        self.key(key);
        self.text.push_str(&value.to_string());
    }

    pub(super) fn boolean(&mut self, key: &str, value: bool) {
        self.raw(key, if value { "true" } else { "false" });
    }

    pub(super) fn raw(&mut self, key: &str, value: &str) {
        self.key(key);
        self.text.push_str(value);
    }

    pub(super) fn finish(mut self) -> String {
        self.text.push('}');
        self.text
    }
}

pub(super) fn push_json_string(out: &mut String, value: &str) {
    out.push('"');
    for character in value.chars() {
        match character {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            control if (control as u32) < 0x20 => {
                out.push_str(&format!("\\u{:04x}", control as u32));
            }
            other => out.push(other),
        }
    }
    out.push('"');
}
