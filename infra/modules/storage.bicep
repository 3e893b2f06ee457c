// Storage for the Functions host (blob leases and keys), the Flex Consumption deployment
// container, and the service's queues and tables. Everything connects with the app's identity;
// shared-key access is off: no plan deployed here needs a key (Flex reads its package with the
// identity; no Azure Files content share is used).

param name string
param location string
param tags object = {}

@description('Principal id of the app identity.')
param principalId string

@description('Subnet allowed through the storage firewall when the app uses VNet integration; empty keeps the public endpoint open to identity-authenticated callers.')
param allowedSubnetId string = ''

// The service's queues: one per step, and the -poison queue the Functions host moves a message
// to after maxDequeueCount failed attempts (host.json).
var queueNames = [
  'mailbox'
  'mailbox-poison'
  'license'
  'license-poison'
  'roles'
  'roles-poison'
]

// ledger: completed steps per user; audit: every change; cursors: the DirSync cookie;
// roleplans: role plans held by a guard until an operator approves them; outcomes: what the
// report mails (provisioned, failed, poisoned); shortages: one row per SKU and day.
var tableNames = [
  'ledger'
  'audit'
  'cursors'
  'roleplans'
  'outcomes'
  'shortages'
]

// Built-in role definitions (ids are the same in every tenant).
var storageBlobDataOwner = 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
var storageQueueDataContributor = '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
var storageQueueDataReader = '19e7f393-937e-4f77-808e-94535e297925'
var storageQueueDataMessageProcessor = '8a0f0c08-91a1-4084-bc3d-661d67233fed'
var storageTableDataContributor = '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'

// Blob Data Owner: the host keeps its locks, timer schedules and function keys in blobs, and
// Flex Consumption reads the deployment package from the 'deployments' container.
// Queue Data Reader + Message Processor: what Microsoft documents for queue triggers.
// Queue Data Contributor: sending messages and creating a -poison queue the host finds missing.
// Table Data Contributor: ledger, audit, cursors and role plans.
var roles = [
  storageBlobDataOwner
  storageQueueDataReader
  storageQueueDataMessageProcessor
  storageQueueDataContributor
  storageTableDataContributor
]

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  #checkov:skip=CKV_AZURE_206:Replication is a cost choice; the data is rebuilt from AD (the source of truth) by the reconcile timer
  #checkov:skip=CKV_AZURE_35:Through Azure Relay the app has no fixed outbound network to allow, so the firewall is open and every caller must present an Entra token (shared keys off); with VNet integration defaultAction is Deny and only the app subnet is allowed
  #checkov:skip=CKV_AZURE_59:Same reason as CKV_AZURE_35: the public endpoint is the only way in without VNet integration; blob public access is off and shared keys are off
  name: name
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: 'Standard_LRS'
  }
  properties: {
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    allowBlobPublicAccess: false
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    allowCrossTenantReplication: false
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      bypass: 'AzureServices'
      defaultAction: empty(allowedSubnetId) ? 'Allow' : 'Deny'
      virtualNetworkRules: empty(allowedSubnetId) ? [] : [
        {
          id: allowedSubnetId
          action: 'Allow'
        }
      ]
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: storage
  name: 'default'
  properties: {
    deleteRetentionPolicy: {
      enabled: true
      days: 7
    }
  }
}

// Flex Consumption deploys the app's package here and reads it with the identity.
resource deployments 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: 'deployments'
  properties: {
    publicAccess: 'None'
  }
}

resource queueService 'Microsoft.Storage/storageAccounts/queueServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource queues 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = [for queue in queueNames: {
  parent: queueService
  name: queue
}]

resource tableService 'Microsoft.Storage/storageAccounts/tableServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource tables 'Microsoft.Storage/storageAccounts/tableServices/tables@2023-05-01' = [for table in tableNames: {
  parent: tableService
  name: table
}]

resource assignments 'Microsoft.Authorization/roleAssignments@2022-04-01' = [for role in roles: {
  name: guid(storage.id, principalId, role)
  scope: storage
  properties: {
    principalId: principalId
    principalType: 'ServicePrincipal'
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role)
  }
}]

output name string = storage.name
output blobServiceUri string = storage.properties.primaryEndpoints.blob
output deploymentContainerUrl string = '${storage.properties.primaryEndpoints.blob}${deployments.name}'
output queueServiceUri string = storage.properties.primaryEndpoints.queue
output tableServiceUri string = storage.properties.primaryEndpoints.table
