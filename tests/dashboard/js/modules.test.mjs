// Every module of the dashboard links: each name it imports is exported by the module it names, and every
// module but the entry (main.js, which wires the page up) loads without a page.
import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { test } from 'node:test';

const DIR = new URL('../../../account_manager/dashboard/', import.meta.url);
const MODULES = readdirSync(DIR).filter((name) => name.endsWith('.js')).sort();
const IMPORT = /^import\s*\{([^}]*)\}\s*from\s*'\.\/([\w-]+\.js)';$/gm;

test('the modules are there', () => {
  assert.ok(MODULES.includes('main.js'));
  assert.ok(MODULES.length > 5);
});

test('every module but main.js loads without a page', async () => {
  for (const name of MODULES.filter((n) => n !== 'main.js')) await import(new URL(name, DIR));
});

test('every imported name is exported by its module', async () => {
  for (const name of MODULES) {
    const source = readFileSync(new URL(name, DIR), 'utf8');
    assert.doesNotMatch(source, /^import\s+(?!\{)/m, `${name}: only named imports of ./modules`);
    for (const [, names, from] of source.matchAll(IMPORT)) {
      assert.ok(MODULES.includes(from), `${name} imports ${from}, which is not a module of the dashboard`);
      if (from === 'main.js') assert.fail(`${name} imports main.js`);
      const exported = await import(new URL(from, DIR));
      for (const imported of names.split(',').map((n) => n.trim()).filter(Boolean)) {
        assert.ok(imported in exported, `${name} imports ${imported}, which ${from} does not export`);
      }
    }
  }
});
