// Pyodide memory snapshots (`_makeSnapshot` / `_loadSnapshot`, experimental in Pyodide 314), behind the server's
// --memory-snapshot: a restore replaces Python's start-up, micropip and the packages' installs and imports with one
// download (server/memory_snapshot.py makes the file once, in headless Chromium; bench/snapshot.py measures it).
// A file holds the memory after python.js's load plus the files Python wrote (installed packages, the game
// contract), which a memory snapshot leaves out: "PFMS", a u32 header length, the header JSON
// {loaded, memory, files} (loadedPackages and the two byte lengths) padded with spaces so that the memory starts on
// a 16-byte boundary (Pyodide reads it as 32-bit words in place), the memory, then the files as a zip.

const MAGIC = "PFMS";

// Every file under site-packages and the working directory, zipped, paths relative to "/".
const FILES = `
import io, os, sysconfig, zipfile
buffer = io.BytesIO()
with zipfile.ZipFile(buffer, "w") as archive:
    for top in (sysconfig.get_paths()["purelib"], os.getcwd()):
        for folder, _, names in os.walk(top):
            for name in names:
                path = os.path.join(folder, name)
                archive.write(path, path.lstrip("/"))
buffer.getvalue()
`;

// The snapshot file of a runtime loaded with `_makeSnapshot: true`. Pyodide refuses to snapshot once packages are
// loaded (it expects `loadedPackages` empty) and when Python holds JS objects it cannot name (micropip's): the
// first is emptied around the snapshot and put back on restore, the others become null (nothing uses them after).
export function makeSnapshot(pyodide) {
  const scope = pyodide.globals.get("dict")();
  let files;
  try {
    const zipped = pyodide.runPython(FILES, { globals: scope });
    files = zipped.toJs();
    zipped.destroy();
  } finally {
    scope.destroy();
  }
  const loaded = { ...pyodide.loadedPackages };
  for (const name of Object.keys(loaded)) delete pyodide.loadedPackages[name];
  let memory;
  try {
    memory = pyodide.makeMemorySnapshot({ serializer: () => null });
  } finally {
    Object.assign(pyodide.loadedPackages, loaded);
  }
  let header = JSON.stringify({ loaded, memory: memory.length, files: files.length });
  header = new TextEncoder().encode(header + " ".repeat((16 - ((8 + header.length) % 16)) % 16));
  const start = 8 + header.length;
  const out = new Uint8Array(start + memory.length + files.length);
  out.set(new TextEncoder().encode(MAGIC));
  new DataView(out.buffer).setUint32(4, header.length, true);
  out.set(header, 8);
  out.set(memory, start);
  out.set(files, start + memory.length);
  return out;
}

function unpack(bytes) {
  if (new TextDecoder().decode(bytes.subarray(0, 4)) !== MAGIC) throw new Error("not a snapshot file");
  const start = 8 + new DataView(bytes.buffer, bytes.byteOffset).getUint32(4, true);
  const header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, start)));
  const memory = bytes.subarray(start, start + header.memory);
  const files = bytes.subarray(start + header.memory, start + header.memory + header.files);
  if (files.length !== header.files) throw new Error("the snapshot file is cut short");
  return { loaded: header.loaded, memory, files };
}

// A runtime restored from the snapshot at `url`, downloaded alongside the core; {pyodide: null, note} when it
// could not be (a failed download, another Pyodide build, a broken file), so the caller loads plainly instead.
export async function restoreSnapshot(loadPyodide, options, url) {
  try {
    const parts = fetch(url).then(async (response) => {
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      return unpack(new Uint8Array(await response.arrayBuffer()));
    });
    parts.catch(() => {});  // when loadPyodide fails first, its error is the one reported
    const pyodide = await loadPyodide({ ...options, _loadSnapshot: parts.then((p) => p.memory),
                                        _snapshotDeserializer: () => null });
    const { loaded, files } = await parts;
    pyodide.unpackArchive(files, "zip", { extractDir: "/" });
    Object.assign(pyodide.loadedPackages, loaded);
    return { pyodide, note: "restored" };
  } catch (err) {
    return { pyodide: null, note: `not used: ${String(err?.message || err).trim().split("\n").pop().slice(0, 200)}` };
  }
}
