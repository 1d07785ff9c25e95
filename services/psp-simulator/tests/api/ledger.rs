//! The ledger: `GET /charges` and its filters, `DELETE /charges`.

use paystream_psp_simulator::ChargeFilter;
use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{charge_body, new_key, spawn_app};

#[tokio::test]
async fn charges_filter_by_merchant_and_payment() {
    let app = spawn_app().await;
    let a1 = charge_body("mer_a", "cus_1");
    let b1 = charge_body("mer_b", "cus_1");
    let a2 = charge_body("mer_a", "cus_2");
    for body in [&a1, &b1, &a2] {
        let reply = app.post_charge(Some(&new_key()), body).await;
        assert_eq!(reply.status, StatusCode::OK);
    }

    let for_a = app
        .psp
        .charges(&ChargeFilter::merchant("mer_a"))
        .await
        .unwrap();
    let payments: Vec<&str> = for_a.iter().map(|r| r.payment_id.as_str()).collect();
    assert_eq!(
        payments,
        [
            a1["payment_id"].as_str().unwrap(),
            a2["payment_id"].as_str().unwrap()
        ]
    );

    let b_payment = b1["payment_id"].as_str().unwrap();
    let for_payment = app
        .psp
        .charges(&ChargeFilter::payment(b_payment))
        .await
        .unwrap();
    assert_eq!(for_payment.len(), 1);
    assert_eq!(for_payment[0].merchant_id, "mer_b");

    // The raw query string works too.
    let raw: Vec<Value> = app
        .http
        .get(format!("{}/charges?merchant_id=mer_b", app.base_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(raw.len(), 1);
    assert_eq!(raw[0]["payment_id"], b1["payment_id"]);

    assert!(app
        .psp
        .charges(&ChargeFilter::merchant("mer_none"))
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn delete_charges_clears_the_ledger() {
    let app = spawn_app().await;
    app.post_charge(Some(&new_key()), &charge_body("mer_1", "cus_1"))
        .await;
    assert_eq!(app.records().await.len(), 1);

    app.psp.clear().await.unwrap();

    assert!(app.records().await.is_empty());
}
