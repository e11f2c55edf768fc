// Builds the web console into the directory named by the first argument
// (default dist/; relative to web/): the files of src/ and uPlot's ES module and stylesheet,
// copied byte for byte (no bundler, no minifier: the output is reproducible
// and reviewable). `npm run build` writes web/dist, which is committed and
// embedded into ternd (web/README.md). TERN_WEB_NODE_MODULES names another
// node_modules to take uPlot from (tests/web/dist_check.sh).
import { copyFileSync, mkdirSync, readdirSync, rmSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const out = resolve(here, process.argv[2] ?? 'dist');
rmSync(out, { recursive: true, force: true });
mkdirSync(join(out, 'vendor'), { recursive: true });
for (const name of readdirSync(join(here, 'src'))) {
  copyFileSync(join(here, 'src', name), join(out, name));
}
const modules = process.env.TERN_WEB_NODE_MODULES || join(here, 'node_modules');
const uplot = join(modules, 'uplot', 'dist');
copyFileSync(join(uplot, 'uPlot.esm.js'), join(out, 'vendor', 'uPlot.esm.js'));
copyFileSync(join(uplot, 'uPlot.min.css'), join(out, 'vendor', 'uPlot.min.css'));
console.log(`web console built in ${out}`);
