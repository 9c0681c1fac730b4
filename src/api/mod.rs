//! The custom resources Tether serves, group `tether.dev`, version `v1alpha1`.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

/// Every CRD Tether serves (filled in as the kinds are added).
pub fn crds() -> Vec<CustomResourceDefinition> {
    Vec::new()
}

/// The CRDs as one multi-document YAML stream, as `tether crds` prints them.
pub fn crds_yaml() -> Result<String, serde_saphyr::ser::Error> {
    let mut out = String::new();
    for crd in crds() {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(&crd)?);
    }
    Ok(out)
}
