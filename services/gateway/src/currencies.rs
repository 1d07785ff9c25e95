//! ISO 4217: the accepted currency codes are paystream-core's table
//! ([`paystream_core::currency`]), shared with the notifier's amount formatting.

pub use paystream_core::currency::is_iso_4217;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_codes_match() {
        for c in ["EUR", "USD", "JPY", "GBP", "CHF", "KWD", "BHD"] {
            assert!(is_iso_4217(c), "{c}");
        }
        for c in ["eur", "EURO", "XXX", "ABC", ""] {
            assert!(!is_iso_4217(c), "{c}");
        }
    }
}
