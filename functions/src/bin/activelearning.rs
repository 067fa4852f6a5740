//! The activelearning function on AWS Lambda (API Gateway HTTP API, payload v2).

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    medlabel_functions::lambda::lambda_main(medlabel_functions::routes::activelearning::router)
        .await
}
