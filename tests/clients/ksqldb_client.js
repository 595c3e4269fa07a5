// Reads the simulator with the npm ksqldb-client, as a user of that client would.
// Usage: node ksqldb_client.js URL STREAM ROWS TABLE
// Prints one JSON object: the streams listed, the described fields, the rows read from the
// stream's push query and the rows of a pull query (`query`) on the table.
// Any error from the client, or an uncaught exception, fails the run.
"use strict";

const KsqldbClient = require("ksqldb-client");

process.on("uncaughtException", (error) => {
    console.error("uncaught:", error);
    process.exit(1);
});

async function main() {
    const [url, stream, wantText, table] = process.argv.slice(2);
    const want = Number(wantText);
    const parsed = new URL(url);
    const client = new KsqldbClient({ host: `http://${parsed.hostname}`, port: Number(parsed.port) });
    await client.connect();
    // Both return what ksqlDB answered (an empty list when the request failed).
    const listed = await client.listStreams();
    const described = await client.describeSource(stream);
    const rows = [];
    let queryId = null;
    await new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`only ${rows.length} rows within 45 s`)), 45000);
        client
            .streamQuery(
                `SELECT * FROM ${stream} EMIT CHANGES;`,
                (data) => {
                    queryId = data.metadata.queryId;
                    rows.push(...(data.rows || []));
                    if (rows.length >= want) {
                        clearTimeout(timer);
                        resolve();
                    }
                },
                { properties: { "auto.offset.reset": "earliest" } }
            )
            .then((result) => {
                if (result && result.error) reject(new Error(`streamQuery: ${JSON.stringify(result.error)}`));
            }, reject);
    });
    if (queryId) await client.terminatePushQuery(queryId);
    const pulled = await client.query(`SELECT * FROM ${table};`);
    if (pulled.error) throw new Error(`query: ${JSON.stringify(pulled.error)}`);
    await client.disconnect();
    // Exit only once the output is written: a pipe is flushed asynchronously.
    process.stdout.write(JSON.stringify({ listed, described, rows, table: pulled.data }) + "\n", () =>
        process.exit(0)
    );
}

main().catch((error) => {
    console.error(error);
    process.exit(1);
});
