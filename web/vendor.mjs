// Copies the console's one npm dependency, uPlot's ES module and stylesheet,
// byte for byte from node_modules into the directory named by the first
// argument (default vendor/; relative to web/). `npm run vendor` writes
// web/vendor, which is committed and embedded into ternd beside web/src
// (web/README.md). TERN_WEB_NODE_MODULES names another node_modules to take
// uPlot from (tests/web/vendor_check.sh).
import { copyFileSync, mkdirSync, rmSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const out = resolve(here, process.argv[2] ?? 'vendor');
rmSync(out, { recursive: true, force: true });
mkdirSync(out, { recursive: true });
const modules = process.env.TERN_WEB_NODE_MODULES || join(here, 'node_modules');
const uplot = join(modules, 'uplot', 'dist');
copyFileSync(join(uplot, 'uPlot.esm.js'), join(out, 'uPlot.esm.js'));
copyFileSync(join(uplot, 'uPlot.min.css'), join(out, 'uPlot.min.css'));
console.log(`uPlot copied into ${out}`);
