/**
 * The one place the UI takes its API types from.
 *
 * Today: the hand-written mirror of the contract. When the backend commits
 * src/crucible/api/openapi.json, run `npm run gen:api` and change the line below to
 * `export * from './generated';` (generated.ts maps schema names onto these names).
 */
export * from './types';
