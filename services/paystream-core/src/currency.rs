//! ISO 4217 currencies: the one table of active alphabetic codes and their minor-unit exponents
//! (list one, as published by the maintenance agency), excluding precious metals, testing and
//! no-currency codes (XAU, XTS, XXX, ...); and amounts in minor units rendered for people.
//!
//! The gateway accepts exactly the codes listed here; the notifier renders amounts with them.

/// (code, exponent: the number of decimals of the minor unit). Sorted by code, so lookups are a
/// binary search.
#[rustfmt::skip]
const EXPONENTS: &[(&str, u32)] = &[
    ("AED", 2), ("AFN", 2), ("ALL", 2), ("AMD", 2), ("ANG", 2), ("AOA", 2), ("ARS", 2),
    ("AUD", 2), ("AWG", 2), ("AZN", 2), ("BAM", 2), ("BBD", 2), ("BDT", 2), ("BGN", 2),
    ("BHD", 3), ("BIF", 0), ("BMD", 2), ("BND", 2), ("BOB", 2), ("BOV", 2), ("BRL", 2),
    ("BSD", 2), ("BTN", 2), ("BWP", 2), ("BYN", 2), ("BZD", 2), ("CAD", 2), ("CDF", 2),
    ("CHE", 2), ("CHF", 2), ("CHW", 2), ("CLF", 4), ("CLP", 0), ("CNY", 2), ("COP", 2),
    ("COU", 2), ("CRC", 2), ("CUP", 2), ("CVE", 2), ("CZK", 2), ("DJF", 0), ("DKK", 2),
    ("DOP", 2), ("DZD", 2), ("EGP", 2), ("ERN", 2), ("ETB", 2), ("EUR", 2), ("FJD", 2),
    ("FKP", 2), ("GBP", 2), ("GEL", 2), ("GHS", 2), ("GIP", 2), ("GMD", 2), ("GNF", 0),
    ("GTQ", 2), ("GYD", 2), ("HKD", 2), ("HNL", 2), ("HTG", 2), ("HUF", 2), ("IDR", 2),
    ("ILS", 2), ("INR", 2), ("IQD", 3), ("IRR", 2), ("ISK", 0), ("JMD", 2), ("JOD", 3),
    ("JPY", 0), ("KES", 2), ("KGS", 2), ("KHR", 2), ("KMF", 0), ("KPW", 2), ("KRW", 0),
    ("KWD", 3), ("KYD", 2), ("KZT", 2), ("LAK", 2), ("LBP", 2), ("LKR", 2), ("LRD", 2),
    ("LSL", 2), ("LYD", 3), ("MAD", 2), ("MDL", 2), ("MGA", 2), ("MKD", 2), ("MMK", 2),
    ("MNT", 2), ("MOP", 2), ("MRU", 2), ("MUR", 2), ("MVR", 2), ("MWK", 2), ("MXN", 2),
    ("MXV", 2), ("MYR", 2), ("MZN", 2), ("NAD", 2), ("NGN", 2), ("NIO", 2), ("NOK", 2),
    ("NPR", 2), ("NZD", 2), ("OMR", 3), ("PAB", 2), ("PEN", 2), ("PGK", 2), ("PHP", 2),
    ("PKR", 2), ("PLN", 2), ("PYG", 0), ("QAR", 2), ("RON", 2), ("RSD", 2), ("RUB", 2),
    ("RWF", 0), ("SAR", 2), ("SBD", 2), ("SCR", 2), ("SDG", 2), ("SEK", 2), ("SGD", 2),
    ("SHP", 2), ("SLE", 2), ("SOS", 2), ("SRD", 2), ("SSP", 2), ("STN", 2), ("SVC", 2),
    ("SYP", 2), ("SZL", 2), ("THB", 2), ("TJS", 2), ("TMT", 2), ("TND", 3), ("TOP", 2),
    ("TRY", 2), ("TTD", 2), ("TWD", 2), ("TZS", 2), ("UAH", 2), ("UGX", 0), ("USD", 2),
    ("USN", 2), ("UYI", 0), ("UYU", 2), ("UYW", 4), ("UZS", 2), ("VED", 2), ("VES", 2),
    ("VND", 0), ("VUV", 0), ("WST", 2), ("XAF", 0), ("XCD", 2), ("XCG", 2), ("XOF", 0),
    ("XPF", 0), ("YER", 2), ("ZAR", 2), ("ZMW", 2), ("ZWG", 2),
];

fn lookup(code: &str) -> Option<usize> {
    EXPONENTS.binary_search_by(|(c, _)| (*c).cmp(code)).ok()
}

/// Whether `code` is a listed ISO 4217 code (exact, upper case: `eur` is not).
pub fn is_iso_4217(code: &str) -> bool {
    lookup(code).is_some()
}

/// The number of decimals of `code`'s minor unit (EUR 2, JPY 0, KWD 3), `None` for a code not
/// in the table.
pub fn exponent(code: &str) -> Option<u32> {
    lookup(code).map(|i| EXPONENTS[i].1)
}

/// `amount_minor` of `code` for people: "19.99 EUR", "1999 JPY", "1.999 KWD", "-0.05 EUR".
///
/// A code not in the table has no known exponent, so the amount is not scaled and says so:
/// "1999 minor units of XYZ".
pub fn format_minor(amount_minor: i64, code: &str) -> String {
    let Some(exp) = exponent(code) else {
        return format!("{amount_minor} minor units of {code}");
    };
    let sign = if amount_minor < 0 { "-" } else { "" };
    let abs = amount_minor.unsigned_abs();
    if exp == 0 {
        return format!("{sign}{abs} {code}");
    }
    let scale = 10u64.pow(exp);
    let width = exp as usize;
    format!(
        "{sign}{}.{:0width$} {code}",
        abs / scale,
        abs % scale,
        width = width
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_and_known_codes_match() {
        assert!(EXPONENTS.windows(2).all(|w| w[0].0 < w[1].0));
        for c in ["EUR", "USD", "JPY", "GBP", "CHF"] {
            assert!(is_iso_4217(c), "{c}");
        }
        for c in ["eur", "EURO", "XXX", "ABC", ""] {
            assert!(!is_iso_4217(c), "{c}");
            assert_eq!(exponent(c), None, "{c}");
        }
    }

    #[test]
    fn exponents_follow_iso_4217() {
        for (code, exp) in [
            ("EUR", 2),
            ("USD", 2),
            ("JPY", 0),
            ("KRW", 0),
            ("KWD", 3),
            ("BHD", 3),
            ("CLF", 4),
        ] {
            assert_eq!(exponent(code), Some(exp), "{code}");
        }
    }

    #[test]
    fn formats_with_the_currency_s_decimals() {
        assert_eq!(format_minor(1999, "EUR"), "19.99 EUR");
        assert_eq!(format_minor(1905, "EUR"), "19.05 EUR");
        assert_eq!(format_minor(1999, "JPY"), "1999 JPY");
        assert_eq!(format_minor(1999, "KWD"), "1.999 KWD");
        assert_eq!(format_minor(1999, "BHD"), "1.999 BHD");
        assert_eq!(format_minor(5, "BHD"), "0.005 BHD");
        assert_eq!(format_minor(12345, "CLF"), "1.2345 CLF");
    }

    #[test]
    fn formats_zero_and_negative_amounts() {
        assert_eq!(format_minor(0, "EUR"), "0.00 EUR");
        assert_eq!(format_minor(0, "JPY"), "0 JPY");
        assert_eq!(format_minor(-5, "EUR"), "-0.05 EUR");
        assert_eq!(format_minor(-1999, "JPY"), "-1999 JPY");
        assert_eq!(format_minor(-1999, "KWD"), "-1.999 KWD");
        assert_eq!(format_minor(i64::MIN, "EUR"), "-92233720368547758.08 EUR");
    }

    #[test]
    fn an_unknown_code_is_not_scaled_and_says_so() {
        assert_eq!(format_minor(1999, "XYZ"), "1999 minor units of XYZ");
        assert_eq!(format_minor(1999, "eur"), "1999 minor units of eur");
    }
}
