// Validates Kubernetes objects against the official OpenAPI schemas that the
// npm package kubernetes-models bundles (and cert-manager's CRD schemas,
// @kubernetes-models/cert-manager), offline (no API server), and finds
// the fields those schemas do not define, which they let through but the
// API server refuses under strict field validation (kubectl's default).
// Run by tests/k8s_manifest_test.py:
//
//   NODE_PATH=DIR/node_modules node tests/k8s_schema_check.mjs OBJECTS.json
//
// OBJECTS.json: [{"source": "where it came from", "object": {...}}, ...].
// Prints one line per object: "ok SOURCE KIND/NAME", "FAIL SOURCE
// KIND/NAME: why" or "SKIP SOURCE KIND/NAME: no schema" (custom resources,
// e.g. cert-manager's); exits 1 if any FAIL, 2 on bad usage.
//
// Unknown fields: the compiled validators read each property their schema
// defines (and enumerate the keys of maps such as labels), so the objects
// are validated through a Proxy that records what is read; a key of the
// manifest that was never read nor enumerated is unknown to the schema.
import { existsSync, readFileSync } from "node:fs";
import { pathToFileURL } from "node:url";
import path from "node:path";

if (process.argv.length !== 3) {
  console.error("usage: node k8s_schema_check.mjs OBJECTS.json");
  process.exit(2);
}
const items = JSON.parse(readFileSync(process.argv[2], "utf8"));

// node_modules (from NODE_PATH: ESM import ignores it, and the packages
// export for import only) holding kubernetes-models and, for cert-manager's
// resources, @kubernetes-models/cert-manager.
const modules = (process.env.NODE_PATH || "").split(path.delimiter).filter(Boolean)
  .find((d) => existsSync(path.join(d, "kubernetes-models", "package.json")));
if (!modules) {
  console.error("k8s_schema_check: no kubernetes-models under NODE_PATH");
  process.exit(2);
}

// The schema module of apiVersion + kind.
function schemaFile(apiVersion, kind) {
  const [group, version] = apiVersion.includes("/") ? apiVersion.split("/") : ["", apiVersion];
  const cap = (s) => s.charAt(0).toUpperCase() + s.slice(1);
  if (group === "cert-manager.io") {
    return path.join(modules, "@kubernetes-models", "cert-manager", "_schemas",
      "ComGithubCertManagerCertManagerPkgApisCertmanager" + cap(version) + kind + ".js");
  }
  const g = group === "" ? "Core" : cap(group.split(".")[0]);
  return path.join(modules, "kubernetes-models", "_schemas", "IoK8sApi" + g + cap(version) + kind + ".js");
}

// Wraps value so that reads and key enumerations are recorded per path.
function track(value, where, seen) {
  if (value === null || typeof value !== "object") return value;
  const rec = { read: new Set(), enumerated: false, keys: Array.isArray(value) ? [] : Object.keys(value) };
  seen.set(where, rec);
  const children = {};
  return new Proxy(value, {
    get(target, key) {
      const v = target[key];
      if (typeof key !== "string") return v;
      rec.read.add(key);
      if (v !== null && typeof v === "object") {
        if (!(key in children)) children[key] = track(v, where + "/" + key, seen);
        return children[key];
      }
      return v;
    },
    ownKeys(target) {
      rec.enumerated = true;
      return Reflect.ownKeys(target);
    },
    has(target, key) {
      if (typeof key === "string") rec.read.add(key);
      return key in target;
    },
  });
}

let failed = 0;
for (const { source, object } of items) {
  const label = `${source} ${object.kind}/${(object.metadata || {}).name}`;
  const file = schemaFile(object.apiVersion, object.kind);
  if (!existsSync(file)) {
    console.log(`SKIP ${label}: no schema for ${object.apiVersion} ${object.kind} in kubernetes-models`);
    continue;
  }
  const { validate } = await import(pathToFileURL(file).href);
  const seen = new Map();
  const ok = validate(track(object, "", seen));
  if (!ok) {
    failed++;
    const why = (validate.errors || []).map((e) =>
      `${e.instancePath || "/"} ${e.keyword} ${JSON.stringify(e.params)}`).join("; ");
    console.log(`FAIL ${label}: ${why}`);
    continue;
  }
  const unknown = [];
  for (const [where, rec] of seen) {
    if (rec.enumerated) continue;
    for (const k of rec.keys) if (!rec.read.has(k)) unknown.push(`${where}/${k}`);
  }
  if (unknown.length) {
    failed++;
    console.log(`FAIL ${label}: fields the schema does not define: ${unknown.join(", ")}`);
  } else {
    console.log(`ok ${label}`);
  }
}
process.exit(failed ? 1 : 0);
