//! SMS encoding and part counting: GSM-7 (160 / 153 per part, extension
//! characters count twice) or UCS-2 (70 / 67 per part, counted in UTF-16 code units).

/// Characters of the GSM 03.38 basic set.
const GSM7_BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
/// Characters of the GSM 03.38 extension table; each costs two septets.
const GSM7_EXTENSION: &str = "^{}\\[~]|€\u{000C}";

/// At most this many parts per message (Telnyx answers 40302 beyond it).
pub const MAX_PARTS: u32 = 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Gsm7,
    Ucs2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segments {
    pub encoding: Encoding,
    /// Length in the encoding's units: septets for GSM-7, UTF-16 code units for UCS-2.
    pub units: usize,
    pub parts: u32,
}

fn gsm7_units(c: char) -> Option<usize> {
    if GSM7_BASIC.contains(c) {
        Some(1)
    } else if GSM7_EXTENSION.contains(c) {
        Some(2)
    } else {
        None
    }
}

/// Count the parts `text` needs.
pub fn segments(text: &str) -> Segments {
    let gsm: Option<usize> = text.chars().map(gsm7_units).sum();
    let (encoding, units, single, multi) = match gsm {
        Some(units) => (Encoding::Gsm7, units, 160, 153),
        None => (Encoding::Ucs2, text.encode_utf16().count(), 70, 67),
    };
    let parts = if units <= single {
        1
    } else {
        units.div_ceil(multi)
    };
    Segments {
        encoding,
        units,
        parts: u32::try_from(parts).unwrap_or(u32::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gsm7_boundaries() {
        assert_eq!(segments("").parts, 1);
        assert_eq!(segments(&"a".repeat(160)).parts, 1);
        assert_eq!(segments(&"a".repeat(161)).parts, 2);
        assert_eq!(segments(&"a".repeat(306)).parts, 2);
        assert_eq!(segments(&"a".repeat(307)).parts, 3);
        assert_eq!(segments(&"a".repeat(1530)).parts, 10);
        assert_eq!(segments(&"a".repeat(1531)).parts, 11);
        assert_eq!(segments("hello").encoding, Encoding::Gsm7);
    }

    #[test]
    fn extension_characters_count_twice() {
        let s = segments(&"€".repeat(80));
        assert_eq!(s.encoding, Encoding::Gsm7);
        assert_eq!(s.units, 160);
        assert_eq!(s.parts, 1);
        assert_eq!(segments(&format!("{}{{", "a".repeat(159))).parts, 2);
    }

    #[test]
    fn any_non_gsm_character_switches_to_ucs2() {
        assert_eq!(segments("héllo").encoding, Encoding::Gsm7); // é is in GSM-7
        let s = segments("hello ✓");
        assert_eq!(s.encoding, Encoding::Ucs2);
        assert_eq!(segments(&"✓".repeat(70)).parts, 1);
        assert_eq!(segments(&"✓".repeat(71)).parts, 2);
        assert_eq!(segments(&"✓".repeat(670)).parts, 10);
        assert_eq!(segments(&"✓".repeat(671)).parts, 11);
    }

    #[test]
    fn ucs2_counts_utf16_units() {
        // An emoji is a surrogate pair: two UTF-16 code units.
        let s = segments(&"😀".repeat(35));
        assert_eq!(s.units, 70);
        assert_eq!(s.parts, 1);
        assert_eq!(segments(&"😀".repeat(36)).parts, 2);
    }
}
