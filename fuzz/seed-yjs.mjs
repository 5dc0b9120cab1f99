// Writes Yjs seeds for the fuzz corpora: updates (v1) of documents with every shared type,
// and the y-websocket messages a provider sends (sync step 1 and 2, update, awareness).
// Run from the repository root: node fuzz/seed-yjs.mjs (uses tests/peers/node_modules).
import { createRequire } from 'node:module';
import { writeFileSync } from 'node:fs';

const require = createRequire(new URL('../tests/peers/package.json', import.meta.url));
const Y = require('yjs');
const syncProtocol = require('y-protocols/sync');
const awarenessProtocol = require('y-protocols/awareness');
const encoding = require('lib0/encoding');

const out = (dir, name, bytes) => writeFileSync(`fuzz/corpus/${dir}/${name}`, Buffer.from(bytes));

const doc = new Y.Doc();
const updates = [];
doc.on('update', (u) => updates.push(u));
const text = doc.getText('text');
text.insert(0, 'hello world');
text.format(0, 5, { bold: true });
text.delete(2, 3);
const map = doc.getMap('map');
map.set('n', 42);
map.set('s', 'str');
map.set('nested', new Y.Map());
map.get('nested').set('deep', [1, 2, { a: null }]);
const arr = doc.getArray('list');
arr.push([1, 'two', new Uint8Array([3]), true]);
arr.insert(1, [new Y.Text('inner')]);
arr.delete(0, 1);
const xml = doc.getXmlFragment('prosemirror');
const p = new Y.XmlElement('paragraph');
p.setAttribute('align', 'left');
p.insert(0, [new Y.XmlText('para')]);
xml.insert(0, [p]);
updates.forEach((u, i) => out('yjs_update', `step-${String(i).padStart(2, '0')}.bin`, u));
out('yjs_update', 'whole.bin', Y.encodeStateAsUpdate(doc));
out('yjs_update', 'empty.bin', Y.encodeStateAsUpdate(new Y.Doc()));

const message = (write) => {
  const e = encoding.createEncoder();
  write(e);
  return encoding.toUint8Array(e);
};
out('yjs_message', 'sync-step1.bin', message((e) => { encoding.writeVarUint(e, 0); syncProtocol.writeSyncStep1(e, doc); }));
out('yjs_message', 'sync-step2.bin', message((e) => { encoding.writeVarUint(e, 0); syncProtocol.writeSyncStep2(e, doc); }));
out('yjs_message', 'update.bin', message((e) => { encoding.writeVarUint(e, 0); syncProtocol.writeUpdate(e, updates[0]); }));
const awareness = new awarenessProtocol.Awareness(doc);
awareness.setLocalState({ user: { name: 'ada', color: '#f00' }, cursor: { anchor: 3, head: 5 } });
out('yjs_message', 'awareness.bin', message((e) => {
  encoding.writeVarUint(e, 1);
  encoding.writeVarUint8Array(e, awarenessProtocol.encodeAwarenessUpdate(awareness, [doc.clientID]));
}));
out('yjs_message', 'awareness-query.bin', message((e) => encoding.writeVarUint(e, 3)));
awareness.destroy();
