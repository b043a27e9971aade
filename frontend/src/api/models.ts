/**
 * The one place the UI takes its API types from.
 *
 * './generated' maps the UI's names onto the types generated from the backend's
 * src/crucible/api/openapi.json (`npm run gen:api`; `npm run check:api` fails on drift).
 * './types' is the hand-written mirror of the contract: point the line below
 * at it to build without the generated file.
 */
export * from './generated';
